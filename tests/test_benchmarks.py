"""The benchmark scripts run end to end on tiny data and print figures in range (their real sizes are for humans)."""
import re, sys
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))


@pytest.mark.parametrize('kind', ['discrete', 'continuous'])
def test_bench_variability_small(kind, tmp_path, capsys):
    import bench_variability
    bench_variability.main(['-n', '240', '-D', '32', '--radii', '4', '--iters', '4', '--threads', '1',
                            '--kind', kind, '--data', str(tmp_path / 'sim')])
    out = capsys.readouterr().out
    rows = [l for l in out.splitlines() if l.startswith('band limit')]
    assert len(rows) == 1, out
    vals = [float(v) for v in re.findall(r'(?:ARI of \d-means|\|rho\| of PC1) (-?[0-9.]+)', rows[0])]
    assert len(vals) == 2 and all(-1 <= v <= 1 for v in vals), rows[0]  # linear and spectral


def test_profile_gpu_small(tmp_path, capsys):
    "benchmarks/profile_gpu.py on the CPU: each variant's whole-epoch rates for both phases, and the profiler tables."
    import json, profile_gpu
    profile_gpu.main(['-n', '64', '-D', '16', '--device', 'cpu', '--out', str(tmp_path), '--variants', 'base', 'batch128',
                      '--profile', '--set', 'dim=16', 'pe_dim=4', 'base_order=0', 'n_levels=2', 'l_start=4', 'l_end=6',
                      't_extent=2', 't_n_grid=3'])
    out = capsys.readouterr().out
    res = json.loads(out[out.rindex('\n{') + 1:])
    assert set(res) == {'base', 'batch128'} and res['batch128']['batch_size_sgd'] == 128
    assert all(r['hps_images_per_s'] > 0 and r['sgd_images_per_s'] > 0 for r in res.values())
    assert '--- SGD epoch' in out and '--- pose-search epoch' in out and 'Self CPU time total' in out


@pytest.mark.parametrize('het', ['discrete', 'continuous'])
def test_diagnose_states_small(tmp_path, capsys, het):
    "benchmarks/diagnose_states.py on a tiny ab initio run: every step prints, with figures in range."
    import diagnose_states
    from drgnai_nb.simulate import SimConfig, simulate_to_dir
    from drgnai_nb.train import TrainConfig, train
    sim = tmp_path / 'sim'
    simulate_to_dir(SimConfig(n_images=96, D=24, snr=1.0, seed=0, shift_px=1.0, heterogeneity=het, n_states=2,
                              junk_fraction=0.1), sim, progress=False)
    tiny = dict(n_imgs_pretrain=64, n_imgs_pose_search=96, epochs_sgd=2, base_order=0, n_levels=2, l_start=6, l_end=8,
                t_extent=2.0, t_n_grid=3, hps_search_batch=32, batch_size_hps=16, batch_size_sgd=16, batch_size_known_poses=16,
                dim=32, pe_dim=8, refine_z_groups=2, z_init_iters=4)
    train(TrainConfig.preset('cpu', particles=str(sim / 'particles.mrcs'), ctf=str(sim / 'ctf.pkl'), zdim=2, **tiny),
          tmp_path / 'run', progress=False)
    diagnose_states.main([str(tmp_path / 'run'), str(sim), '--bands', '5', '--max-particles', '16', '--threads', '1', '--windows', '3'])
    out = capsys.readouterr().out
    what = 'ARI' if het == 'discrete' else r'\|rho\| of PC1'
    first = re.search(what + r' of the final z (-?[0-9.]+); pose error median ([0-9.]+)°', out)
    assert first and -1 <= float(first.group(1)) <= 1 and 0 <= float(first.group(2)) <= 180, out
    step2 = re.search(r'run poses (-?[0-9.]+); true poses (-?[0-9.]+); true poses for the \d+ off by > 5°: (-?[0-9.]+)', out)
    assert step2 and all(-1 <= float(v) <= 1 for v in step2.groups()), out
    shares = [float(v) for v in re.findall(r'fits the group maps better for ([0-9.]+) of them', out)]
    assert shares and all(0 <= v <= 1 for v in shares), out
    # step 5: the truth's groups backprojected at the run's poses and at the true poses, each judged in its own frame
    five = re.findall(r'step 5, (\d+) (?:true states|bins of the true motion) backprojected at the (run|true) poses \(band \d+ px\): '
                      r'best-fitting group is their own for ([0-9.]+); (?:ARI|\|rho\| with the motion) (-?[0-9.]+)', out)
    assert [f[1] for f in five] == ['run', 'true'], out
    assert all(int(f[0]) == (2 if het == 'discrete' else 3) and 0 <= float(f[2]) <= 1 and -1 <= float(f[3]) <= 1 for f in five), out
    if het == 'discrete':
        acc = re.search(r'is their own for ([0-9.]+) at the true pose, ([0-9.]+) after', out)
        assert acc and all(0 <= float(v) <= 1 for v in acc.groups()), out
        assert float(acc.group(1)) > 0.8  # SNR 1, two states: the true maps tell them apart
        assert float(five[1][2]) > 0.8  # and so do maps backprojected from the true poses
    else:
        rot = re.search(r'rank correlation with the motion of the x, y, z components ([-+0-9.]+), ([-+0-9.]+), ([-+0-9.]+);', out)
        assert rot and all(-1 <= float(v) <= 1 for v in rot.groups()), out
        lim = re.search(r"step 6, 16 particles: the images' own limit.*\|rho\| with the motion ([0-9.]+) \(band \d+ px\), ([0-9.]+) \(band 12 px\)", out)
        assert lim and float(lim.group(2)) > 0.8, out  # SNR 1: the exact images place the particles along the motion


def test_bench_atomic_small(tmp_path, capsys):
    "benchmarks/bench_atomic.py end to end on a written 120-atom model: a set, its Fourier crop, all four table rows."
    import json, gemmi, numpy as np, bench_atomic
    rng = np.random.default_rng(0)
    st = gemmi.Structure(); st.add_model(gemmi.Model('1')); ch = gemmi.Chain('A')
    for i in range(120):
        r = gemmi.Residue(); r.name = 'GLY'; r.seqid = gemmi.SeqId(i + 1, ' ')
        at = gemmi.Atom(); at.name = 'C'; at.element = gemmi.Element('C'); at.occ = 1.0
        at.pos = gemmi.Position(*(rng.normal(size=3) * [9, 6, 4])); r.add_atom(at); ch.add_residue(r)
    st[0].add_chain(ch); st.setup_entities(); st.write_pdb(str(tmp_path / 'm.pdb'))
    tiny = ['n_imgs_pretrain=64', 'n_imgs_pose_search=96', 'epochs_sgd=2', 'base_order=0', 'n_levels=2', 'l_start=4', 'l_end=6',
            't_extent=2.0', 't_n_grid=3', 'hps_search_batch=32', 'batch_size_hps=16', 'batch_size_sgd=16', 'batch_size_known_poses=16',
            'dim=16', 'pe_dim=4']
    bench_atomic.main(['--model', str(tmp_path / 'm.pdb'), '-n', '96', '-D', '32', '--Apix', '3', '--boxes', '16', '--snr', '1',
                       '--threads', '1', '--out', str(tmp_path / 'b'), '--set', *tiny])
    out = capsys.readouterr().out
    res = json.loads((tmp_path / 'b' / 'bench_atomic.json').read_text())['16']
    assert {'abinit', 'hps_only', 'fixed', 'floor'} <= set(res) and res['abinit_resources']['peak_rss_gb'] > 0
    assert (tmp_path / 'b' / 'data_D16' / 'vol.mrc').exists() and res['abinit']['Apix'] == 6.0
    for name in ('ab initio', 'HPS only', 'true poses (fixed)', 'floor vs true map'): assert f'| {name}' in out, out


def test_het_without_k_small(tmp_path, capsys):
    "benchmarks/het_without_k.py on a tiny 3-state set: simulate, train with no K, analyze --truth, one table row in range."
    import het_without_k
    het_without_k.main([str(tmp_path), '--sets', 'A', '-n', '96', '-D', '24', '--train-set', 'n_imgs_pretrain=96', 'n_imgs_pose_search=96',
                        'epochs_sgd=2', 'l_start=6', 'l_end=8', 't_extent=2', 't_n_grid=3', 'dim=32', 'pe_dim=8', 'base_order=0',
                        'n_levels=2', 're_search_base_order=0', 're_search_l_start=6', 'refine_levels=2', 'z_init_iters=4', 'classify_folds=2'])
    out = capsys.readouterr().out
    rows = [l for l in out.splitlines() if l.startswith('| A |')]
    assert len(rows) == 1, out
    cells = [c.strip() for c in rows[0].split('|')[1:-1]]
    true, found = (int(x) for x in cells[2].split(' / '))
    assert true == 3 and 1 <= found <= 8, cells
    auc, bound = (float(x) for x in cells[7].split(' / '))
    assert 0 < auc <= 0.5 and 0 < bound <= 0.5, cells
