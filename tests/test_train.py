"""Training: every mode, z_dim = 0 and > 0 on tiny data; checkpoints survive SIGKILL; a NaN stops cleanly;
existing runs are protected; the CLI's train command and its config precedence."""
import os, re, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
import torch
from drgnai_nb.io import load_checkpoint, load_poses, load_pkl, read_mrc
from drgnai_nb.simulate import SimConfig, simulate_to_dir
from drgnai_nb.train import TrainConfig, Trainer, TrainingDiverged, train, latest_epoch
from drgnai_nb.cli import main

TINY = dict(n_imgs_pretrain=64, n_imgs_pose_search=64, epochs_sgd=1, l_start=6, l_end=8, t_extent=2.0, t_n_grid=3,
            hps_search_batch=32, batch_size_hps=16, batch_size_sgd=16, batch_size_known_poses=16, dim=32, pe_dim=8)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp('tiny')
    simulate_to_dir(SimConfig(n_images=64, D=24, snr=1.0, seed=0, shift_px=1.0, heterogeneity='discrete', n_states=2), d, progress=False)
    return d


def _cfg(tiny, **kw):
    return TrainConfig.preset('cpu', particles=str(tiny / 'particles.mrcs'), ctf=str(tiny / 'ctf.pkl'), **{**TINY, **kw})


def _check_run(out, N, zdim, epoch):
    assert latest_epoch(out) == epoch
    r, t = load_poses(out / f'pose.{epoch}.pkl')
    assert r.shape == (N, 3, 3) and t.shape == (N, 2) and np.abs(t).max() < 1
    vol, info = read_mrc(out / f'reconstruct.{epoch}.mrc')
    assert vol.shape == (24, 24, 24) and abs(info.Apix - 3.0) < 1e-5 and np.isfinite(vol).all()
    if zdim: assert load_pkl(out / f'z.{epoch}.pkl').shape == (N, zdim)
    st = load_checkpoint(out / f'weights.{epoch}.pt')
    assert st['epoch'] == epoch and 'model_state_dict' in st
    assert (out / 'config.yaml').exists() and (out / 'run.log').exists() and (out / 'learning_curve.csv').exists()
    assert not list(out.glob('*.tmp*')), 'temporary files left behind'


@pytest.mark.parametrize('mode, zdim, volume', [('abinit', 0, 'neural'), ('abinit', 2, 'neural'), ('refine', 0, 'neural'),
                                                ('refine', 2, 'neural'), ('fixed', 0, 'neural'), ('fixed', 2, 'neural'),
                                                ('fixed', 0, 'voxel')])
def test_modes(tiny, tmp_path, mode, zdim, volume):
    kw = dict(mode=mode, zdim=zdim, volume=volume)
    if mode != 'abinit': kw['poses'] = str(tiny / 'poses.pkl')
    tr = train(_cfg(tiny, **kw), tmp_path / 'run', progress=False)
    phases = [h['phase'] for h in tr.history]
    assert phases == {'abinit': ['hps', 'sgd'], 'refine': ['sgd'], 'fixed': ['fixed']}[mode]
    _check_run(tmp_path / 'run', 64, zdim, tr.epoch)
    if mode == 'fixed':  # the given poses are written back unchanged
        r0, t0 = load_poses(tiny / 'poses.pkl'); r, t = load_poses(tmp_path / f'run/pose.{tr.epoch}.pkl')
        assert np.allclose(r, r0, atol=1e-5) and np.allclose(t, t0, atol=1e-5)


def test_compare_to_truth_state_frames(tiny, tmp_path):
    """compare_to_truth on a discrete set aligns each true state on its own: with the true poses every state's frame
    is the joint one; turning one state's poses by 5° (a map turned with its particles) shows as a 5° spread of the
    frames, with no error left inside either state while the joint alignment splits the turn between them."""
    import pickle, shutil
    from scipy.spatial.transform import Rotation
    from drgnai_nb.train import compare_to_truth, format_truth_table
    train(_cfg(tiny, mode='fixed', poses=str(tiny / 'poses.pkl'), zdim=2), tmp_path / 'run', progress=False)
    d = compare_to_truth(tmp_path / 'run', tiny)
    assert len(d['state_rotation_median_deg']) == 2 and d['state_frame_spread_deg'] < 0.01
    assert max(d['state_rotation_median_deg'] + d['state_rotation_median_joint_deg']) < 0.01
    lab = np.asarray(load_pkl(tiny / 'labels.pkl')); e = latest_epoch(tmp_path / 'run')
    r, t = load_poses(tmp_path / f'run/pose.{e}.pkl')
    Q = Rotation.from_rotvec(np.radians(5.0) * np.array([0.6, 0.0, 0.8])).as_matrix()
    r[lab == 1] = r[lab == 1] @ Q  # state 1's map and poses turned together
    with open(tmp_path / f'run/pose.{e}.pkl', 'wb') as f: pickle.dump((r.astype(np.float32), t), f)
    d = compare_to_truth(tmp_path / 'run', tiny)
    assert abs(d['state_frame_spread_deg'] - 5.0) < 0.05, d['state_frame_spread_deg']
    assert max(d['state_rotation_median_deg']) < 0.05 and sum(d['state_rotation_median_joint_deg']) > 4.0
    assert "the states' frames differ by up to 5.00°" in format_truth_table(d)


def test_compare_to_truth_continuous(tmp_path):
    "A continuous set has several volumes (points along its motion) and one label: compare_to_truth gives it no state figures."
    from drgnai_nb.train import compare_to_truth, format_truth_table
    sim = tmp_path / 'sim'
    simulate_to_dir(SimConfig(n_images=48, D=24, snr=1.0, seed=0, heterogeneity='continuous'), sim, progress=False)
    assert len(sorted(sim.glob('vol_*.mrc'))) >= 2
    train(TrainConfig.preset('cpu', particles=str(sim / 'particles.mrcs'), ctf=str(sim / 'ctf.pkl'), mode='fixed',
                             poses=str(sim / 'poses.pkl'), zdim=1, **{**TINY, 'epochs_sgd': 1}), tmp_path / 'run', progress=False)
    d = compare_to_truth(tmp_path / 'run', sim)
    assert d['n'] == 48 and d['rotation_median_deg'] < 0.01 and d['fsc05_px'] > 0
    assert not any(k.startswith('state_') for k in d) and 'states:' not in format_truth_table(d)


def test_variability_init_finds_states(tiny, tmp_path):
    "z starts from the residuals' principal 3-D variability once poses are known: the two simulated states separate."
    from drgnai_nb.metrics import cluster_accuracy
    from drgnai_nb.train import conformation_groups
    cfg = _cfg(tiny, mode='fixed', poses=str(tiny / 'poses.pkl'), zdim=2, epochs_sgd=2, z_steps_radius=6, z_init_radius=6)
    assert cfg.z_init == 'variability'
    tr = train(cfg, tmp_path / 'run', progress=False)
    assert 'principal variability' in (tmp_path / 'run/run.log').read_text()
    z = load_pkl(tmp_path / f'run/z.{tr.epoch}.pkl')
    _, a = conformation_groups(torch.as_tensor(z), 2)
    acc = cluster_accuracy(load_pkl(tiny / 'labels.pkl'), a.numpy())
    assert acc >= 0.9, f'2-means of z matches the states on {acc:.2f} of particles'
    # estimating z again (z_reestimate) keeps the decoder's axes: the new z is the old one up to noise, not a new basis
    old = tr.z_all().copy()
    tr.variability_init(align=True)
    new = tr.z_all()
    assert 're-estimated' in (tmp_path / 'run/run.log').read_text()
    c = np.corrcoef(old[:, :2].T, new[:, :2].T)[:2, 2:]  # the states' axis (the first) stays where it was; the second is noise
    assert c[0, 0] > 0.6 and c[0, 0] > abs(c[0, 1]) and c[0, 0] > abs(c[1, 0]), f'old/new z axes correlate as {c}'
    acc2 = cluster_accuracy(load_pkl(tiny / 'labels.pkl'), conformation_groups(torch.as_tensor(new), 2)[1].numpy())
    assert acc2 >= 0.75, f"re-estimated z: 2-means matches the states on {acc2:.2f} (64 images: noisy)"


def _two_states_with_junk(tmp_path, n, snr, junk, **kw):
    "A simulated 2-state set (D=24, seed 1) with a junk fraction, and a tiny heterogeneous config on it with its true poses."
    d = tmp_path / 'sim'
    simulate_to_dir(SimConfig(n_images=n, D=24, snr=snr, seed=1, shift_px=1.0, heterogeneity='discrete', n_states=2,
                              junk_fraction=junk), d, progress=False)
    return d, TrainConfig.preset('cpu', particles=str(d / 'particles.mrcs'), ctf=str(d / 'ctf.pkl'), poses=str(d / 'poses.pkl'),
                                 zdim=2, dim=32, pe_dim=8, **kw)


def test_variability_init_leaves_out_junk(tmp_path):
    "Junk particles (a separate low mode of the fit gain) are left out of the variability components."
    from drgnai_nb.simulate import SimConfig, simulate_to_dir
    from drgnai_nb.metrics import cluster_accuracy
    from drgnai_nb.train import conformation_groups
    d, cfg = _two_states_with_junk(tmp_path, 160, 2.0, 0.3, mode='fixed', epochs_sgd=2, z_steps_radius=6, z_init_radius=6,
                                   batch_size_known_poses=16)
    tr = train(cfg, tmp_path / 'run', progress=False)
    log = (tmp_path / 'run/run.log').read_text()
    n_out = int(log.split('particles left out as junk')[0].split(';')[-1].split(' of ')[0])
    lab = load_pkl(d / 'labels.pkl')
    assert abs(n_out - (lab == -1).sum()) <= 0.3 * (lab == -1).sum(), f'{n_out} left out, {(lab == -1).sum()} junk'
    ok = lab >= 0
    acc = cluster_accuracy(lab[ok], conformation_groups(torch.as_tensor(tr.z_all()[ok]), 2)[1].numpy())
    assert acc >= 0.8, f'2-means of the particles\' z matches the states on {acc:.2f}'
    # the same rule on demand, at the current poses (what `classify_poses` leaves out of its class maps)
    fj = tr.fit_junk()
    assert fj.shape == lab.shape and (fj == (lab < 0)).mean() > 0.9, f'fit_junk agrees with the junk labels on {(fj == (lab < 0)).mean():.2f}'


def test_classify_poses(tmp_path):
    "3-D classification passes put particles of the wrong conformation group in the right one and keep their poses."
    from drgnai_nb.metrics import cluster_accuracy, pose_error
    d, cfg = _two_states_with_junk(tmp_path, 240, 0.5, 0.1, mode='refine', refine_z_groups=2, classify_rounds=2, classify_k=2,
                                   base_order=0, n_levels=2, l_start=6, l_end=8, t_extent=2.0, t_n_grid=3, re_search_base_order=0)
    tr = Trainer(cfg, tmp_path / 'run', progress=False)
    lab = load_pkl(d / 'labels.pkl'); ok = lab >= 0
    g = np.random.default_rng(0)
    wrong = np.where(g.random(len(lab)) < 0.25, 1 - lab, lab)  # z in two tight groups, a quarter of the particles in the other state's
    with torch.no_grad(): tr.conf.weight[:, 0] = torch.as_tensor(np.where(wrong == 1, 1.0, -1.0)).float()
    rec = tr.classify_poses(global_first=False, junk=lab < 0)  # tiny noisy half maps: a global search would fit their noise
    assert len(rec['moved']) == 2 and rec['moved'][0] > 0.1 and sum(rec['sizes']) == len(lab)
    before, after = cluster_accuracy(lab[ok], wrong[ok]), cluster_accuracy(lab[ok], rec['classes'][ok])
    assert before < 0.8 and after > 0.93, (before, after)
    # where each particle lies between the final class maps: one amplitude for 2 classes, split at its 2-means
    a = rec['amplitudes']
    assert a.shape == (len(lab), 1) and np.isfinite(a).all()
    from sklearn.cluster import KMeans
    acc_a = cluster_accuracy(lab[ok], KMeans(2, n_init=10, random_state=0).fit_predict(a[ok]))
    assert acc_a > 0.9, f'2-means of the class amplitudes matches the states on {acc_a:.2f}'
    zc = tr.z_from_classes(rec)  # classify_z='classes': z from them alone
    acc_z = cluster_accuracy(lab[ok], KMeans(2, n_init=10, random_state=0).fit_predict(tr.z_all()[ok]))
    assert zc.shape == (len(lab), 2) and acc_z > 0.9, f'2-means of z from the classes matches the states on {acc_z:.2f}'
    R, _ = tr.current_poses()
    err = pose_error(R.numpy()[ok], load_poses(d / 'poses.pkl')[0][ok], try_mirror=False).rot
    assert np.median(err) < 5.0, f'poses moved away from the truth: median {np.median(err):.2f}°'  # 4.3° (noisy maps of 60 images each)
    assert '3-D classification: 2 classes, 2 rounds' in (tmp_path / 'run/run.log').read_text()
    # in a run: the pass opens the SGD phase's last epoch, and z is re-estimated after it
    tr2 = train(_cfg(d, mode='refine', poses=str(d / 'poses.pkl'), zdim=2, epochs_sgd=3, classify_rounds=1, classify_k=2, refine_z_groups=2,
                     z_reestimate=True, classify_z='both'), tmp_path / 'run2', progress=False)
    log = (tmp_path / 'run2/run.log').read_text()
    assert log.count('3-D classification') == 1 and log.index('3-D classification') < log.rindex('re-estimated') < log.rindex('epoch 2 (sgd)')
    assert "variability components and the classification (1 and 2 coordinates)" in log  # classify_z='both': class amplitudes and errors too
    # junk left out of the class maps, found by the run itself (the mean map's fit, then the class maps' fit)
    n_left = int(re.search(r'(\d+) particles left out of the class maps as junk', log).group(1))
    assert abs(n_left - int((lab < 0).sum())) <= 2, (n_left, int((lab < 0).sum()))
    with pytest.raises(Exception, match='classify_rounds'): _cfg(d, classify_rounds=-1)
    with pytest.raises(Exception, match='classify_k'): _cfg(d, classify_rounds=2, classify_k=1)  # one class is no classification
    assert _cfg(d, zdim=2).classify_rounds == 3 and _cfg(d, zdim=2).classify_k == 0  # the presets: K found in z
    with pytest.raises(Exception, match='classify_folds'): _cfg(d, classify_rounds=2, classify_k=2, classify_folds=1)
    with pytest.raises(Exception, match='classify_z'): _cfg(d, classify_rounds=2, classify_k=2, classify_z='kmeans')


def test_classify_finds_k(tmp_path):
    "classify_k=0: the number of classes is the number of states count_states finds in z; one connected cloud: no classification."
    from drgnai_nb.metrics import cluster_accuracy
    d, cfg = _two_states_with_junk(tmp_path, 240, 0.5, 0.1, mode='refine', refine_z_groups=2, classify_rounds=1, classify_k=0,
                                   base_order=0, n_levels=2, l_start=6, l_end=8, t_extent=2.0, t_n_grid=3, re_search_base_order=0)
    lab = load_pkl(d / 'labels.pkl'); ok = lab >= 0
    tr = Trainer(cfg, tmp_path / 'run', progress=False)
    g = np.random.default_rng(0)
    with torch.no_grad():  # two clouds in z, a tenth of the particles in the other state's
        wrong = np.where(g.random(len(lab)) < 0.1, 1 - lab, lab)
        tr.conf.weight[:] = torch.as_tensor(np.c_[np.where(wrong == 1, 1.0, -1.0), np.zeros(len(lab))] + 0.1 * g.standard_normal((len(lab), 2))).float()
    rec = tr.classify_poses(global_first=False, junk=lab < 0)
    assert rec['states']['n_states'] == 2 and len(rec['sizes']) == 2, rec['states']
    assert cluster_accuracy(lab[ok], rec['classes'][ok]) > 0.93
    assert 'states in z: 2' in (tmp_path / 'run/run.log').read_text()
    with torch.no_grad(): tr.conf.weight[:] = torch.as_tensor(g.standard_normal((len(lab), 2))).float()  # one cloud
    R0 = tr.current_poses()[0].clone()
    rec = tr.classify_poses(global_first=False, junk=lab < 0)
    assert rec['states']['n_states'] == 1 and 'classes' not in rec and torch.equal(tr.current_poses()[0], R0)
    assert 'one connected cloud: no classification' in (tmp_path / 'run/run.log').read_text()


def test_cli_remove_junk(tmp_path):
    "train --remove-junk: junk.pkl and keep.pkl split the particles, and a second run trains on the kept ones."
    d, _ = _two_states_with_junk(tmp_path, 96, 2.0, 0.25)
    out = tmp_path / 'run'
    args = ['train', str(out), '--particles', str(d / 'particles.mrcs'), '--ctf', str(d / 'ctf.pkl'), '--preset', 'cpu', '--zdim', '2',
            '--no-progress', '--remove-junk', '--set'] + [f'{k}={v}' for k, v in {**TINY, 'classify_rounds': 0}.items()]
    assert main(args) == 0
    junk, keep = load_pkl(out / 'junk.pkl'), load_pkl(out / 'keep.pkl')
    assert len(junk) > 0 and sorted(np.r_[junk, keep].tolist()) == list(range(96))
    sub = out / 'without_junk'
    import yaml
    assert Path(yaml.safe_load((sub / 'config.yaml').read_text())['ind']) == (out / 'keep.pkl').resolve()
    _check_run(sub, len(keep), 2, latest_epoch(out))
    assert 'training again on the' in (out / 'run.log').read_text()


def test_index_selection(tiny, tmp_path):
    from drgnai_nb.io import save_ind
    save_ind(tmp_path / 'ind.pkl', np.arange(0, 64, 2))
    tr = train(_cfg(tiny, ind=str(tmp_path / 'ind.pkl')), tmp_path / 'run', progress=False)
    assert tr.N == 32
    _check_run(tmp_path / 'run', 32, 0, tr.epoch)


def test_existing_run_is_protected(tiny, tmp_path):
    train(_cfg(tiny, epochs_sgd=0), tmp_path / 'run', progress=False)
    with pytest.raises(FileExistsError, match='--overwrite'):
        Trainer(_cfg(tiny), tmp_path / 'run', progress=False)
    train(_cfg(tiny, epochs_sgd=0), tmp_path / 'run', overwrite=True, progress=False)


def test_nan_stops_cleanly(tiny, tmp_path, monkeypatch):
    tr = Trainer(_cfg(tiny, epochs_sgd=2), tmp_path / 'run', progress=False)
    real = Trainer.loss
    def poisoned(self, *a, **k):
        out = real(self, *a, **k)
        return out * float('nan') if self.epoch >= 1 else out
    monkeypatch.setattr(Trainer, 'loss', poisoned)
    with pytest.raises(TrainingDiverged, match='weights.0.pt'):
        tr.fit()
    assert latest_epoch(tmp_path / 'run') == 0
    _check_run(tmp_path / 'run', 64, 0, 0)  # the last good checkpoint is intact and loadable
    assert np.isfinite(read_mrc(tmp_path / 'run/reconstruct.0.mrc')[0]).all()


def test_sigkill_and_resume(tiny, tmp_path):
    "Kill a training process mid-epoch with SIGKILL, then `--load latest` finishes the run with no corrupted file."
    out = tmp_path / 'run'
    args = ['train', str(out), '--particles', str(tiny / 'particles.mrcs'), '--ctf', str(tiny / 'ctf.pkl'), '--preset', 'cpu',
            '--no-progress', '--set'] + [f'{k}={v}' for k, v in {**TINY, 'epochs_sgd': 40, 'checkpoint_every': 1}.items()]
    p = subprocess.Popen([sys.executable, '-c', 'import sys; from drgnai_nb.cli import main; sys.exit(main(sys.argv[1:]))', *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while latest_epoch(out) is None or latest_epoch(out) < 2:
        assert p.poll() is None, p.stderr.read().decode()
        assert time.time() - t0 < 120, 'training did not reach epoch 2'
        time.sleep(0.05)
    time.sleep(0.3)  # mid-epoch (or mid-checkpoint)
    p.send_signal(signal.SIGKILL); p.wait()
    e = latest_epoch(out)
    assert e is not None and e < 40
    load_checkpoint(out / f'weights.{e}.pt')  # the newest checkpoint on disk is complete
    assert main(['train', str(out), '--load', 'latest', '--no-progress']) == 0
    _check_run(out, 64, 0, 40)
    log = (out / 'run.log').read_text()
    assert 'resumed from' in log and 'done' in log
    # the same run uninterrupted: a resumed run is bit-identical to it (poses, and the map's voxels)
    ref = tmp_path / 'ref'
    assert main(['train', str(ref)] + args[2:]) == 0
    assert (out / 'pose.40.pkl').read_bytes() == (ref / 'pose.40.pkl').read_bytes()
    assert np.array_equal(read_mrc(out / 'reconstruct.40.mrc')[0], read_mrc(ref / 'reconstruct.40.mrc')[0])


def test_config_built_directly_trains(tiny, tmp_path):
    "`TrainConfig(...)` (no preset) has the field `preset` = 'gpu' and writes its run directory (the classmethod of that name once became the field's value)."
    cfg = TrainConfig(particles=str(tiny / 'particles.mrcs'), ctf=str(tiny / 'ctf.pkl'), **TINY)
    assert cfg.preset == 'gpu'
    tr = train(cfg, tmp_path / 'run', progress=False)
    _check_run(tmp_path / 'run', 64, 0, tr.epoch)
    import yaml
    assert yaml.safe_load((tmp_path / 'run/config.yaml').read_text())['preset'] == 'gpu'


def test_cli_config_precedence(tiny, tmp_path):
    from drgnai_nb.cli import build_parser, train_config_from_args
    import yaml
    (tmp_path / 'c.yaml').write_text(yaml.safe_dump({'lr': 0.005, 'epochs_sgd': 3}))
    a = build_parser().parse_args(['train', str(tmp_path / 'r'), '--particles', 'x.mrcs', '--config', str(tmp_path / 'c.yaml'),
                                   '--zdim', '2', '--set', 'epochs_sgd=7', 'invert=false'])
    cfg, note = train_config_from_args(a, cuda=False)
    # a heterogeneous run gets the preset's heterogeneous layer (a 256-wide decoder) under the user's fields
    assert (cfg.preset, cfg.dim, cfg.lr, cfg.epochs_sgd, cfg.zdim, cfg.invert) == ('cpu', 256, 0.005, 7, 2, False)
    assert "'cpu' preset" in note
    cfg, _ = train_config_from_args(build_parser().parse_args(['train', 'r', '--particles', 'x.mrcs', '--zdim', '2',
                                                                '--set', 'dim=96']), cuda=False)
    assert (cfg.dim, cfg.pe_dim) == (96, 32)  # a width the user gives wins; the rest of the preset stays
    cfg, _ = train_config_from_args(build_parser().parse_args(['train', 'r', '--particles', 'x.mrcs']), cuda=False)
    assert (cfg.zdim, cfg.dim) == (0, 128)  # homogeneous: the preset's own width
    (tmp_path / 'z.yaml').write_text(yaml.safe_dump({'zdim': 3}))
    cfg, _ = train_config_from_args(build_parser().parse_args(['train', 'r', '--particles', 'x.mrcs', '--config', str(tmp_path / 'z.yaml'),
                                                                '--preset', 'cpu']), cuda=False)
    assert (cfg.zdim, cfg.dim) == (3, 256)  # zdim from a config file counts too
    cfg, note = train_config_from_args(build_parser().parse_args(['train', 'r', '--particles', 'x.mrcs']), cuda=True)
    assert cfg.preset == 'gpu' and cfg.dim == 256 and 'CUDA' in note
    # --classes K: classification into K states, three rounds unless --set says otherwise
    args = lambda *x: build_parser().parse_args(['train', 'r', '--particles', 'x.mrcs', '--zdim', '4', *x])
    cfg, _ = train_config_from_args(args('--classes', '3'), cuda=False)
    assert (cfg.classify_k, cfg.classify_rounds) == (3, 3)
    cfg, _ = train_config_from_args(args('--classes', '2', '--set', 'classify_rounds=5'), cuda=False)
    assert (cfg.classify_k, cfg.classify_rounds) == (2, 5)
    cfg, _ = train_config_from_args(args('--classes', '3', '--set', 'classify_z=both', '--seed', '1', '--set', 'classify_rounds=2', 'lr=2e-3'), cuda=False)
    assert (cfg.classify_z, cfg.classify_rounds, cfg.lr, cfg.seed) == ('both', 2, 2e-3, 1)  # every --set counts, not only the last
    c = train_config_from_args(args(), cuda=False)[0]
    assert (c.classify_k, c.classify_rounds) == (0, 3)  # the default: classify into the states found in z
    c = train_config_from_args(args('--classes', '0'), cuda=False)[0]
    assert c.classify_rounds == 0  # --classes 0: no classification


def test_cli_train_bad_input(tiny, tmp_path, capsys):
    assert main(['train', str(tmp_path / 'r'), '--particles', str(tiny / 'particles.mrcs'), '--mode', 'fixed']) == 2
    assert 'poses' in capsys.readouterr().err
    assert main(['train', str(tmp_path / 'r'), '--particles', str(tiny / 'particles.mrcs'), '--set', 'nonsense=1']) == 2
    assert 'unknown config field' in capsys.readouterr().err
    assert not (tmp_path / 'r').exists()


def test_cli_demo_quick(tmp_path, capsys):
    assert main(['demo', str(tmp_path / 'demo'), '-n', '64', '-D', '24', '--quick', '--no-progress', '--set',
                 'l_start=6', 'l_end=8', 't_extent=2', 't_n_grid=3', 'dim=32', 'pe_dim=8']) == 0
    out = capsys.readouterr().out
    assert 'out-of-plane' in out and (tmp_path / 'demo/summary.json').exists()


def test_training_modules_do_not_import_analysis():
    "The training side (train and the modules it is composed of) reads no analysis code: the former train <-> analysis cycle is gone."
    import ast
    pkg = Path(__file__).resolve().parents[1] / 'drgnai_nb'
    for name in ('train', 'runtime', 'config', 'rundir', 'junk', 'truth', 'variability', 'classify', 'passes', 'schedule'):
        tree = ast.parse((pkg / f'{name}.py').read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
               {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(m.split('.')[-1] in ('analysis', 'explore', 'cli', 'distributed') for m in mods), (name, sorted(mods))


def test_decode_bound_is_not_left_behind(tiny, tmp_path):
    "A run's decoding bound holds while it computes; the process's default is back after it (no module global set by a run)."
    from drgnai_nb import models
    before = models.DECODE_MAX_ELEMS
    tr = train(_cfg(tiny, decode_max_elems=2**17), tmp_path / 'run', progress=False)
    assert tr.decode_max_elems == 2**17 and models.DECODE_MAX_ELEMS == before
