"""drgnai_nb.explore: the widgets build headless, a selection (as the browser's lasso message sends it) saves the right
particles, the star/.cs export reads back, and the notebook `analyze` writes executes headless and uses what it
imports. The real-browser test is tests/test_explore_browser.py."""
import ast, json, os, sys
from pathlib import Path

import numpy as np
import pytest

from drgnai_nb import analysis as A
from drgnai_nb.explore import latent_explorer, volume_viewer, load_table, points_in_polygon
from drgnai_nb.io import load_ind, read_star, star_to_poses, star_to_ctf, read_cs, save_ind, DrgnaiInputError
from drgnai_nb.simulate import SimConfig, simulate_to_dir
from drgnai_nb.train import TrainConfig, train
from test_analysis import TINY, make_cs


@pytest.fixture(scope='module')
def het(tmp_path_factory):
    "A tiny heterogeneous run on a cryoSPARC .cs, trained on a subset (--ind), analysed."
    d = tmp_path_factory.mktemp('explore')
    sim = d / 'sim'
    simulate_to_dir(SimConfig(n_images=48, D=24, snr=1.0, seed=1, shift_px=1.0, heterogeneity='discrete', n_states=2), sim, progress=False)
    cs = make_cs(sim)
    save_ind(d / 'ind.pkl', np.arange(8, 48))
    train(TrainConfig.preset('cpu', particles=str(cs), ctf=str(sim / 'ctf.pkl'), ind=str(d / 'ind.pkl'), zdim=2, mode='fixed',
                             poses=str(sim / 'poses.pkl'), **TINY), d / 'run', progress=False)
    A.analyze(d / 'run', ksample=3, pc=1, n_per_pc=2, D=12, progress=False)
    return {'run': d / 'run', 'cs': cs, 'analysis': d / 'run' / 'analyze.0'}


def test_explorer_selection_and_save(het, tmp_path):
    ex = latent_explorer(het['run'], outdir=tmp_path)
    run = ex.run
    assert ex.cluster_column == 'kmeans3' and (ex.x.value, ex.y.value) == ('PC1', 'PC2')  # zdim 2: no separate embedding
    assert len(np.frombuffer(ex.plot.x, np.float32)) == run.N and ex.widget is not None
    # a lasso in the browser arrives as a message with its outline in the axes' units
    x, y = ex.xy()
    sel = np.argsort(x)[:3]
    px, py = [x[sel].min() - 1e-6, x[sel].max() + 1e-6, x[sel].max() + 1e-6, x[sel].min() - 1e-6], [-1e9, -1e9, 1e9, 1e9]
    ex._on_msg(ex.plot, {'event': 'lasso', 'x': px, 'y': py}, [])
    np.testing.assert_array_equal(ex.selected, np.sort(sel))
    np.testing.assert_array_equal(np.frombuffer(ex.plot.sel, np.int32), np.sort(sel))  # the overlay the plot draws
    assert '<b>3</b> of 40' in ex.info.value
    assert ex.gallery.value[:4] == b'\x89PNG'
    sel = np.sort(sel)
    ex.name.value = 'lasso'
    ex.save_all_button.click()
    orig = run.ind[sel]
    np.testing.assert_array_equal(load_ind(tmp_path / 'lasso.pkl'), orig)
    s = read_star(tmp_path / 'lasso.star')
    assert [int(x.split('@')[0]) - 1 for x in s.particles['rlnImageName']] == orig.tolist()
    np.testing.assert_allclose(star_to_poses(s)[0], run.rot[sel], atol=1e-4)
    np.testing.assert_allclose(star_to_ctf(s), run.ctf()[sel], rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(read_cs(tmp_path / 'lasso.cs'), read_cs(het['cs'])[orig])
    # clusters, junk, invert; the index-only button
    labels = ex.table['kmeans3'].values
    ex.clusters.value = (1, 2); ex.cluster_button.click()
    np.testing.assert_array_equal(ex.selected, np.nonzero(np.isin(labels, [1, 2]))[0])
    ex.invert_button.click()
    np.testing.assert_array_equal(ex.selected, np.nonzero(labels == 0)[0])
    ex.save('ind', 'c0')
    np.testing.assert_array_equal(load_ind(tmp_path / 'c0.pkl'), run.ind[labels == 0])
    assert not (tmp_path / 'c0.star').exists()
    # axes and colour from pose / CTF columns
    ex.x.value, ex.y.value, ex.colour.value = 'azimuth', 'dfU', 'tilt'
    np.testing.assert_allclose(np.frombuffer(ex.plot.x, np.float32), ex.table['azimuth'].values, rtol=1e-6)
    np.testing.assert_allclose(np.frombuffer(ex.plot.c, np.float32), ex.table['tilt'].values, rtol=1e-6)
    assert ex.plot.spec['colour']['mode'] == 'continuous'
    ex.colour.value = 'kmeans3'; assert ex.plot.spec['colour']['ticktext'] == ['0', '1', '2']
    ex._on_msg(ex.plot, {'event': 'box', 'x': [-180, 0], 'y': [-1e9, 1e9]}, [])
    np.testing.assert_array_equal(ex.selected, np.nonzero(ex.table['azimuth'].values <= 0)[0])
    ex._on_msg(ex.plot, {'event': 'clear'}, [])
    assert len(ex.selected) == 0 and ex.save() == {} and ex.gallery.layout.display == 'none'
    with pytest.raises(DrgnaiInputError): ex.select([40])


def test_explorer_without_analysis(het, tmp_path):
    run = A.load_run(het['run'])
    df, ccol = load_table(run)
    assert len(df) == 40 and ccol.startswith('kmeans') and 'znorm_score' in df
    with pytest.raises(DrgnaiInputError, match='rows'):
        bad = tmp_path / 'a'; bad.mkdir(); df.iloc[:5].to_csv(bad / 'particles.csv'); load_table(run, bad)


def test_volume_viewer(het):
    vv = volume_viewer(het['run'], box=12)
    run = vv.run
    assert 'kmeans3 #0' in vv.choices and 'pc1 #1' in vv.choices
    vv.choice.value = 'kmeans3 #2'
    z = np.loadtxt(het['analysis'] / 'kmeans3/centers.txt')[2]
    np.testing.assert_allclose(np.asarray(vv.iso.value), run.volume(z, D=12).ravel(), atol=1e-5)
    vv.threshold.value = float(vv.threshold.min + 0.7 * (vv.threshold.max - vv.threshold.min))
    assert abs(vv.iso.isomin - vv.threshold.value) < 1e-9
    vv.set_z(run.z[3])
    assert vv.choice.value == 'custom'


def test_explore_notebook_executes(het, tmp_path, monkeypatch):
    "The notebook analyze wrote runs headless (nbconvert's executor) with this interpreter's kernel."
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor
    kdir = tmp_path / 'jup' / 'kernels' / 'python3'; kdir.mkdir(parents=True)
    (kdir / 'kernel.json').write_text(json.dumps({'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
                                                  'display_name': 'Python 3', 'language': 'python'}))
    monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jup'))
    nb = nbformat.read(het['analysis'] / 'drgnai_explore.ipynb', as_version=4)
    assert str(het['run'].resolve()) in nb.cells[1].source
    ExecutePreprocessor(timeout=300, kernel_name='python3').preprocess(nb, {'metadata': {'path': str(tmp_path)}})
    outs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
    assert not [o for o in outs if o.output_type == 'error']
    assert any('application/vnd.jupyter.widget-view+json' in o.get('data', {}) for o in outs)
    assert any('40 particles, zdim 2' in o.get('text', '') for o in outs)
    # every name the notebook imports is used in it
    src = '\n'.join(c.source for c in nb.cells if c.cell_type == 'code')
    tree = ast.parse(src)
    names = [a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names]
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert names and not [n for n in names if n not in used], f'the notebook imports names it never uses: {[n for n in names if n not in used]}'
