"""drgnai_nb.analysis and its subcommands (analyze, eval-vol, traverse, filter) on tiny runs; a slow accuracy test
on 3 states + 20 % junk and on continuous motion (the issue's done-means figures)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from drgnai_nb import analysis as A
from drgnai_nb.cli import main
from drgnai_nb.io import (load_ind, load_pkl, read_mrc, read_star, star_to_poses, star_to_ctf, read_cs, load_ctf, save_ind,
                          DrgnaiInputError)
from drgnai_nb.simulate import SimConfig, simulate_to_dir
from drgnai_nb.train import TrainConfig, train

TINY = dict(n_imgs_pretrain=64, n_imgs_pose_search=64, epochs_sgd=1, l_start=6, l_end=8, t_extent=2.0, t_n_grid=3,
            hps_search_batch=32, batch_size_hps=16, batch_size_sgd=16, batch_size_known_poses=16, dim=32, pe_dim=8)


def make_cs(sim:Path)->Path:
    "A cryoSPARC particle table for a simulated stack (blob paths relative to the .cs)."
    ctf = load_ctf(sim / 'ctf.pkl'); N, D = len(ctf), int(ctf[0, 0])
    dt = [('uid', '<u8'), ('blob/path', 'S64'), ('blob/idx', '<u4'), ('blob/shape', '<u4', (2,)), ('blob/psize_A', '<f4'),
          ('ctf/accel_kv', '<f4'), ('ctf/cs_mm', '<f4'), ('ctf/amp_contrast', '<f4'), ('ctf/df1_A', '<f4'), ('ctf/df2_A', '<f4'),
          ('ctf/df_angle_rad', '<f4'), ('ctf/phase_shift_rad', '<f4')]
    a = np.zeros(N, dt)
    a['uid'], a['blob/path'], a['blob/idx'], a['blob/shape'], a['blob/psize_A'] = np.arange(N) + 1000, b'particles.mrcs', np.arange(N), D, ctf[:, 1]
    a['ctf/df1_A'], a['ctf/df2_A'], a['ctf/df_angle_rad'] = ctf[:, 2], ctf[:, 3], np.radians(ctf[:, 4])
    a['ctf/accel_kv'], a['ctf/cs_mm'], a['ctf/amp_contrast'] = ctf[:, 5], ctf[:, 6], ctf[:, 7]
    p = sim / 'particles.cs'
    with open(p, 'wb') as fh: np.save(fh, a)
    return p


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "A tiny 2-state set, a heterogeneous run on a .cs with an --ind selection, and a homogeneous run."
    d = tmp_path_factory.mktemp('analysis')
    sim = d / 'sim'
    simulate_to_dir(SimConfig(n_images=64, D=24, snr=1.0, seed=0, shift_px=1.0, heterogeneity='discrete', n_states=2), sim, progress=False)
    cs = make_cs(sim)
    ind = np.setdiff1d(np.arange(64), np.arange(0, 64, 4))  # 48 particles; original indices != run positions
    save_ind(d / 'ind.pkl', ind)
    common = dict(ctf=str(sim / 'ctf.pkl'), mode='fixed', poses=str(sim / 'poses.pkl'), **TINY)
    train(TrainConfig.preset('cpu', particles=str(cs), ind=str(d / 'ind.pkl'), zdim=2, **common), d / 'het', progress=False)
    train(TrainConfig.preset('cpu', particles=str(sim / 'particles.mrcs'), zdim=0, **common), d / 'homo', progress=False)
    return {'dir': d, 'sim': sim, 'cs': cs, 'ind': ind, 'het': d / 'het', 'homo': d / 'homo'}


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_load_run(data):
    run = A.load_run(data['het'])
    assert (run.N, run.zdim, run.D) == (48, 2, 24)
    np.testing.assert_array_equal(run.ind, data['ind'])
    np.testing.assert_allclose(run.ctf(), load_ctf(data['sim'] / 'ctf.pkl')[data['ind']])
    np.testing.assert_array_equal(A.from_original(run, [5, 1]), [3, 0])
    with pytest.raises(DrgnaiInputError, match='not one of the run'): A.from_original(run, [4])
    with pytest.raises(DrgnaiInputError, match='epochs with checkpoints'): A.load_run(data['het'], 7)


def test_analyze_heterogeneous(data, capsys):
    code, out, err = _run(capsys, 'analyze', data['het'], '--ksample', 4, '--pc', 1, '--n-per-pc', 3, '-d', 16, '--gmm',
                          '--truth', data['sim'], '--no-progress')
    assert code == 0, err
    a = data['het'] / 'analyze.0'
    s = json.loads((a / 'summary.json').read_text())
    assert s['embedding'] == 'z' and len(s['pca_explained_variance_ratio']) == 2 and 'ari_kmeans_nonjunk' in s['truth']
    # the poses against the truth too (the run used the true poses), each state aligned on its own
    assert s['truth']['rotation_median_deg'] < 0.01 and s['truth']['state_frame_spread_deg'] < 0.01 and len(s['truth']['state_rotation_median_deg']) == 2
    assert 'rotation_median_deg' in out and 'state_frame_spread_deg' in out
    assert s['junk']['rule'] == 'fit' and 'ashman_d' in s['junk']['fit'] and 'n_junk' in s['junk']['znorm']
    assert load_pkl(a / 'kmeans4/labels.pkl').shape == (48,) and load_pkl(a / 'gmm4/labels.pkl').shape == (48,)
    assert sorted(p.name for p in (a / 'kmeans4').glob('vol_*.mrc')) == [f'vol_00{i}.mrc' for i in range(4)]
    v, info = read_mrc(a / 'pc1/vol_002.mrc')
    assert v.shape == (16, 16, 16) and abs(info.Apix - 3.0 * 24 / 16) < 1e-4
    assert np.loadtxt(a / 'pc1/z_values.txt').shape == (3, 2) and np.loadtxt(a / 'kmeans4/centers.txt').shape == (4, 2)
    junk, keep = load_ind(a / 'junk.pkl'), load_ind(a / 'keep.pkl')
    assert sorted(np.r_[junk, keep].tolist()) == data['ind'].tolist()  # original indices
    for f in ('learning_curve.png', 'pose_distribution.png', 'kmeans4_pca.png', 'pca_variance.png', 'junk_score.png',
              'particles.csv', 'z_pca.txt', 'embedding.txt', 'drgnai_explore.ipynb'):
        assert (a / f).exists(), f
    assert not list(a.rglob('.*.tmp'))


def test_analyze_homogeneous(data, capsys):
    code, out, err = _run(capsys, 'analyze', data['homo'], '--ref', data['sim'] / 'vol_000.mrc', '--no-halfmaps', '--no-progress')
    assert code == 0, err
    a = data['homo'] / 'analyze.0'
    s = json.loads((a / 'summary.json').read_text())
    assert s['zdim'] == 0 and s['ref_fsc05_A'] > 0 and s['junk']['rule'] == 'fit' and 'junk (fit rule)' in out
    assert len(load_ind(a / 'junk.pkl')) + len(load_ind(a / 'keep.pkl')) == 64
    for f in ('map.mrc', 'fsc.png', 'fsc_ref.txt', 'pose_distribution.png', 'learning_curve.png'):
        assert (a / f).exists(), f
    assert abs(read_mrc(a / 'map.mrc')[1].Apix - 3.0) < 1e-5
    h = A.half_map_fsc(A.load_run(data['homo']), progress=False, pad=1)  # (pad 1: quick; analyze uses 2)
    assert h['half1'].shape == (24, 24, 24) and h['fsc'].resolution(0.5).px < 12


def test_eval_vol(data, capsys, tmp_path):
    run = A.load_run(data['het'])
    z = run.z[[3, 10, 7]]
    code, out, err = _run(capsys, 'eval-vol', data['het'], '-z', *z.ravel().tolist(), '-o', tmp_path / 'v', '--no-progress')
    assert code == 0, err
    for i in range(3):  # in the order given
        np.testing.assert_allclose(read_mrc(tmp_path / f'v/vol_{i:03d}.mrc')[0], run.volume(z[i]), atol=1e-5)
    np.savetxt(tmp_path / 'z.txt', z[:2])
    code, out, err = _run(capsys, 'eval-vol', data['het'], '--zfile', tmp_path / 'z.txt', '-o', tmp_path / 'w', '--downsample', 12,
                          '--flip', '--invert', '--Apix', 2.0, '--no-progress')
    v, info = read_mrc(tmp_path / 'w/vol_001.mrc')
    assert code == 0 and v.shape == (12, 12, 12) and abs(info.Apix - 4.0) < 1e-5
    np.testing.assert_allclose(v, -run.volume(z[1], D=12)[::-1], atol=1e-5)
    code, out, err = _run(capsys, 'eval-vol', data['het'], '-z', 1, 2, 3, '-o', tmp_path / 'x')
    assert code == 2 and 'multiple of zdim' in err and not (tmp_path / 'x').exists()
    code, out, err = _run(capsys, 'eval-vol', data['homo'], '-z', 1, '-o', tmp_path / 'x')
    assert code == 2 and 'homogeneous' in err
    code, out, err = _run(capsys, 'eval-vol', data['homo'], '-o', tmp_path / 'h', '--no-progress')
    assert code == 0 and (tmp_path / 'h/vol_000.mrc').exists()


def test_traverse(data, capsys, tmp_path):
    code, out, err = _run(capsys, 'traverse', data['het'], '--pc', 1, '-n', 4, '-o', tmp_path / 'pc', '-d', 12, '--no-progress')
    assert code == 0 and np.loadtxt(tmp_path / 'pc/z_values.txt').shape == (4, 2) and (tmp_path / 'pc/vol_003.mrc').exists()
    code, out, err = _run(capsys, 'traverse', data['het'], '--direct', 0, 5, 9, '-n', 3, '-o', tmp_path / 'd', '--skip-vol')
    assert code == 0 and np.loadtxt(tmp_path / 'd/z_values.txt').shape == (5, 2)
    code, out, err = _run(capsys, 'traverse', data['het'], '--graph', 0, 5, '-o', tmp_path / 'g', '--skip-vol')
    p = np.loadtxt(tmp_path / 'g/path_ind.txt', ndmin=2)
    assert code == 0 and p[0, 0] == 0 and p[-1, 0] == 5 and p[-1, 1] == data['ind'][5]
    code, out, err = _run(capsys, 'traverse', data['het'], '--graph', 0, 500, '-o', tmp_path / 'bad')
    assert code == 2 and 'out of range' in err


def _check_export(run, d, name, sel, cs_path):
    "NAME.pkl holds original indices; NAME.star and NAME.cs read back with the same particles, poses and CTF."
    orig = run.ind[sel]
    np.testing.assert_array_equal(load_ind(d / f'{name}.pkl'), orig)
    s = read_star(d / f'{name}.star')
    assert [int(x.split('@')[0]) - 1 for x in s.particles['rlnImageName']] == orig.tolist()
    r, t = star_to_poses(s)
    np.testing.assert_allclose(r, run.rot[sel], atol=1e-4); np.testing.assert_allclose(t, run.trans[sel], atol=1e-5)
    np.testing.assert_allclose(star_to_ctf(s), run.ctf()[sel], rtol=1e-5, atol=1e-3)
    c = read_cs(d / f'{name}.cs')
    np.testing.assert_array_equal(c, read_cs(cs_path)[orig])


def test_filter(data, capsys, tmp_path):
    run = A.load_run(data['het'])
    code, out, err = _run(capsys, 'filter', data['het'], '--junk', '--junk-rule', 'znorm', '--junk-threshold', 1.0, '-o', tmp_path / 'j')
    assert code == 0, err
    junk, _ = A.junk_by_znorm(run.z, 1.0)
    assert junk.any() and (~junk).any()
    _check_export(run, tmp_path / 'j', 'keep', np.nonzero(~junk)[0], data['cs'])
    np.testing.assert_array_equal(load_ind(tmp_path / 'j/keep_excluded.pkl'), run.ind[junk])
    # --junk with no rule: analyze's junk.pkl if present, else the fit rule now
    code, out, err = _run(capsys, 'filter', data['het'], '--junk', '-o', tmp_path / 'k')
    f = data['het'] / 'analyze.0/junk.pkl'
    expect = np.setdiff1d(run.ind, load_ind(f)) if f.exists() else run.ind[~A.junk_by_fit(A.fit_gain(run, progress=False))[0]]
    assert code == 0, err
    np.testing.assert_array_equal(load_ind(tmp_path / 'k/keep.pkl'), expect)
    # clusters of the saved k-means (analyze wrote kmeans4 in an earlier test, or they are computed now)
    code, out, err = _run(capsys, 'filter', data['het'], '--clusters', '0,1', '--kmeans', 4, '-o', tmp_path / 'c', '--name', 'good')
    labels = A.cluster_latent(run.z, 4).labels
    assert code == 0, err
    _check_export(run, tmp_path / 'c', 'good', np.nonzero(np.isin(labels, [0, 1]))[0], data['cs'])
    save_ind(tmp_path / 'sel.pkl', run.ind[[4, 2]])
    code, out, err = _run(capsys, 'filter', data['het'], '--ind', tmp_path / 'sel.pkl', '--exclude', '-o', tmp_path / 'e')
    assert code == 0 and len(load_ind(tmp_path / 'e/keep.pkl')) == 46 and 'kept 46 of 48' in out
    code, out, err = _run(capsys, 'filter', data['het'], '--clusters', '0,x', '-o', tmp_path / 'bad')
    assert code == 2 and 'comma-separated' in err and not (tmp_path / 'bad').exists()


def test_filter_then_train_with_ind(data, capsys, tmp_path):
    "The selection goes straight back into training: train --ind keep.pkl on the same particle file."
    code, _, err = _run(capsys, 'filter', data['het'], '--clusters', '0', '--kmeans', 3, '-o', tmp_path / 'f')
    assert code == 0, err
    keep = load_ind(tmp_path / 'f/keep.pkl')
    cfg = TrainConfig.preset('cpu', particles=str(data['cs']), ctf=str(data['sim'] / 'ctf.pkl'), ind=str(tmp_path / 'f/keep.pkl'),
                             zdim=2, mode='fixed', poses=str(data['sim'] / 'poses.pkl'), **TINY)
    tr = train(cfg, tmp_path / 'run2', progress=False)
    assert tr.N == len(keep)
    np.testing.assert_array_equal(A.load_run(tmp_path / 'run2').ind, keep)


def test_fit_junk_rule(tmp_path):
    "The fit rule finds simulated junk (25 %, clumps and empty images) in a tiny homogeneous run."
    sim = tmp_path / 'sim'
    simulate_to_dir(SimConfig(n_images=128, D=24, snr=1.0, seed=2, shift_px=1.0, junk_fraction=0.25), sim, progress=False)
    train(TrainConfig.preset('cpu', particles=str(sim / 'particles.mrcs'), ctf=str(sim / 'ctf.pkl'), mode='fixed',
                             poses=str(sim / 'poses.pkl'), **TINY), tmp_path / 'run', progress=False)
    s = A.analyze(tmp_path / 'run', truth=sim, halfmaps=False, skip_vol=True, notebook=False, progress=False)
    assert s['truth']['junk_recall'] >= 0.9 and s['truth']['junk_precision'] >= 0.9, s['truth']
    bad = np.nonzero(load_pkl(sim / 'labels.pkl') < 0)[0]
    assert len(np.intersect1d(load_ind(tmp_path / 'run/analyze.0/junk.pkl'), bad)) >= 0.9 * len(bad)


def test_truth_continuous(tmp_path):
    "The continuous-motion path of the truth comparison (Spearman rho of PC1 vs the motion coordinate) runs."
    sim = tmp_path / 'sim'
    simulate_to_dir(SimConfig(n_images=48, D=24, snr=1.0, seed=3, shift_px=1.0, heterogeneity='continuous'), sim, progress=False)
    train(TrainConfig.preset('cpu', particles=str(sim / 'particles.mrcs'), ctf=str(sim / 'ctf.pkl'), mode='fixed', zdim=1,
                             poses=str(sim / 'poses.pkl'), **TINY), tmp_path / 'run', progress=False)
    t = A.truth_metrics(A.load_run(tmp_path / 'run'), sim)
    assert -1 <= t['spearman_pc1_u'] <= 1 and 'ari_kmeans_nonjunk' not in t


def test_bad_inputs(data, capsys, tmp_path):
    code, _, err = _run(capsys, 'analyze', tmp_path / 'nope')
    assert code == 2 and 'run directory not found' in err
    code, _, err = _run(capsys, 'analyze', data['het'], '--epoch', 3)
    assert code == 2 and 'weights.3.pt' in err
    code, _, err = _run(capsys, 'analyze', data['het'], '--ksample', 0)
    assert code == 2 and '--ksample' in err
    run = A.load_run(data['het'])
    with pytest.raises(DrgnaiInputError, match='out of range'): A.export_selection(run, [48], tmp_path / 's')
    with pytest.raises(DrgnaiInputError, match='k=100'): A.cluster_latent(run.z, 100)


# ------------------------------------------------------------------------------------------------- accuracy (slow)
def _ab_initio(tmp_path, **sim):
    d = tmp_path / 'sim'
    simulate_to_dir(SimConfig(n_images=2000, D=64, snr=0.1, seed=0, **sim), d, progress=False)
    cfg = TrainConfig.preset('cpu', particles=str(d / 'particles.mrcs'), ctf=str(d / 'ctf.pkl'), zdim=4)
    train(cfg, tmp_path / 'run', progress=False)
    return d, tmp_path / 'run'


@pytest.mark.slow
def test_accuracy_discrete_with_junk(tmp_path):
    "3 states + 20 % junk (D=64, SNR 0.1), ab initio with zdim 4, then analyze: the issue's done-means figures."
    sim, run = _ab_initio(tmp_path, heterogeneity='discrete', n_states=3, junk_fraction=0.2)
    s = A.analyze(run, ksample=20, truth=sim, skip_vol=True, notebook=False, progress=False)['truth']
    print(json.dumps(s, indent=1))
    assert s['ari_kmeans_nonjunk'] >= 0.9
    assert s['junk_recall'] >= 0.9 and s['junk_precision'] >= 0.9
    assert min(s['state_fsc05_frac_nyquist']) >= 0.5


@pytest.mark.slow
def test_accuracy_continuous(tmp_path):
    "Continuous motion: |Spearman rho| between PC1 and the true motion coordinate >= 0.9."
    sim, run = _ab_initio(tmp_path, heterogeneity='continuous')
    s = A.analyze(run, truth=sim, skip_vol=True, notebook=False, progress=False)['truth']
    print(json.dumps(s, indent=1))
    assert abs(s['spearman_pc1_u']) >= 0.9
