"""Scale (issue 6) on the CPU: mixed precision in the single-process trainer (bf16 against float32 on the same simulated
data, fp16 with loss scaling through a checkpoint and resume, 'auto' = float32 on the CPU, the `amp` config field
through the CLI and config.yaml), and streaming reads (positioned reads against the memory map, the shuffling buffer)."""
import numpy as np
import pytest
import torch
import yaml
from drgnai_nb.io import load_checkpoint, load_poses, read_mrc, DrgnaiInputError
from drgnai_nb.simulate import SimConfig, simulate_to_dir
from drgnai_nb.so3 import geodesic_distance
from drgnai_nb.train import TrainConfig, Trainer, train, latest_epoch
from drgnai_nb.cli import main

SMALL = dict(dim=32, pe_dim=8, layers=2, lr=1e-3, l_start=6, l_end=10, t_extent=2.0, t_n_grid=3, refine_levels=2,
             batch_size_sgd=16, batch_size_known_poses=16, device='cpu')  # the CPU's behaviour, also where a GPU is present (tests/test_cuda.py has the GPU's)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('scale')
    simulate_to_dir(SimConfig(n_images=128, D=24, snr=1.0, seed=0, shift_px=1.0), d, progress=False)
    return d


pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py


def _cfg(data, **kw):
    return TrainConfig.preset('cpu', particles=str(data / 'particles.mrcs'), ctf=str(data / 'ctf.pkl'),
                              poses=str(data / 'poses.pkl'), **{**SMALL, **kw})


def _corr(a, b): return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_bf16_matches_float32(data, tmp_path):
    """Mode 'refine' (pose refinement passes against bf16-evaluated caches, SGD of decoder and pose table with a bf16
    decoder): the poses and the map of amp='bf16' stay close to amp='off' on the same data and seed -- closer than
    either moved from the starting poses, and the map far closer to the float32 map than the shared initial map is."""
    runs = {}
    for amp in ('off', 'bf16'):
        runs[amp] = train(_cfg(data, mode='refine', epochs_sgd=3, refine_every=1, amp=amp), tmp_path / amp, progress=False)
    assert runs['off'].amp_dtype is None and runs['bf16'].amp_dtype == torch.bfloat16
    assert 'amp=bf16 -> decoder in bfloat16' in (tmp_path / 'bf16/run.log').read_text()
    e = latest_epoch(tmp_path / 'off')
    assert e == latest_epoch(tmp_path / 'bf16') == 2
    (r0, t0), (r1, t1) = (load_poses(tmp_path / f'{a}/pose.{e}.pkl') for a in ('off', 'bf16'))
    rg, tg = load_poses(data / 'poses.pkl')
    drot = np.degrees(geodesic_distance(torch.as_tensor(r0), torch.as_tensor(r1)).numpy())
    moved = np.degrees(geodesic_distance(torch.as_tensor(r0), torch.as_tensor(rg)).numpy())
    dt = np.abs(t0 - t1).max(1) * 24  # pixels
    assert np.median(drot) < 0.5 and np.median(dt) < 0.05, (np.median(drot), np.median(dt))
    assert np.median(drot) < 0.5 * np.median(moved) + 1e-3, (np.median(drot), np.median(moved))
    m0, m1 = (read_mrc(tmp_path / f'{a}/reconstruct.{e}.mrc')[0] for a in ('off', 'bf16'))
    init = Trainer(_cfg(data, mode='refine'), tmp_path / 'init', progress=False).volume().numpy()
    assert _corr(m0, m1) > 0.99 and _corr(m0, m1) > _corr(m0, init) + 0.05, (_corr(m0, m1), _corr(m0, init))
    l0, l1 = runs['off'].history[-1]['loss'], runs['bf16'].history[-1]['loss']
    assert abs(l1 - l0) / l0 < 0.02, (l0, l1)


def test_auto_is_float32_on_cpu(data, tmp_path):
    "amp='auto' on the CPU is bit-identical to amp='off' (mode 'fixed', two epochs)."
    a = train(_cfg(data, mode='fixed', epochs_sgd=2, amp='auto'), tmp_path / 'auto', progress=False)
    b = train(_cfg(data, mode='fixed', epochs_sgd=2, amp='off'), tmp_path / 'off', progress=False)
    assert a.amp_dtype is None and not a.scaler.enabled
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert [h['loss'] for h in a.history] == [h['loss'] for h in b.history]


def test_fp16_loss_scaling_checkpoint_and_resume(data, tmp_path):
    "fp16 (CPU autocast) steps through the GradScaler; its state is checkpointed and restored on --load latest."
    cfg = _cfg(data, mode='refine', epochs_sgd=1, refine_every=0, amp='fp16')
    tr = train(cfg, tmp_path / 'run', progress=False)
    assert tr.scaler.enabled and np.isfinite(tr.history[-1]['loss'])
    st = load_checkpoint(tmp_path / 'run/weights.0.pt')
    assert st['amp_scaler']['scale'] > 0 and st['config']['amp'] == 'fp16'
    more = Trainer(TrainConfig.from_dict({**cfg.to_dict(), 'epochs_sgd': 2}), tmp_path / 'run', load='latest', progress=False)
    assert more.scaler.state_dict() == st['amp_scaler']
    more.fit()
    assert latest_epoch(tmp_path / 'run') == 1


def test_amp_field_from_cli_and_old_config(data, tmp_path, capsys):
    "--set amp=... reaches config.yaml; a bad value is refused naming the field; a config.yaml without the field loads."
    out = tmp_path / 'cli'
    args = ['train', str(out), '--particles', str(data / 'particles.mrcs'), '--ctf', str(data / 'ctf.pkl'),
            '--poses', str(data / 'poses.pkl'), '--mode', 'fixed', '--preset', 'cpu', '--no-progress',
            '--set', 'dim=32', 'pe_dim=8', 'device=cpu', 'epochs_sgd=1']
    assert main(args[:-5] + ['--set', 'amp=half']) == 2
    assert "'amp'" in capsys.readouterr().err and not out.exists()
    assert main(args + ['amp=bf16', 'reader=mmap', 'shuffle_chunk=32']) == 0
    saved = yaml.safe_load((out / 'config.yaml').read_text())
    assert (saved['amp'], saved['reader'], saved['shuffle_chunk']) == ('bf16', 'mmap', 32)
    log = (out / 'run.log').read_text()
    assert 'amp=bf16 -> decoder in bfloat16' in log and 'lazily (mmap)' in log and 'shuffling buffer 16 x 32' in log
    # a run directory written before these fields existed resumes with their defaults
    old = {k: v for k, v in saved.items() if k not in ('amp', 'reader', 'shuffle_chunk', 'shuffle_buffer')}
    (out / 'config.yaml').write_text(yaml.safe_dump(old))
    assert main(['train', str(out), '--load', 'latest', '--no-progress', '--set', 'epochs_sgd=2']) == 0
    resumed = yaml.safe_load((out / 'config.yaml').read_text())
    assert (resumed['amp'], resumed['reader'], resumed['shuffle_chunk']) == ('auto', 'pread', 0)
    assert latest_epoch(out) == 1


def test_readers_and_shuffling_buffer(data, tmp_path, monkeypatch):
    """Positioned reads (default) and the memory map give bit-identical training; with the shuffling buffer each epoch
    still visits every particle once, and its batches come from few chunks."""
    a = train(_cfg(data, mode='fixed', epochs_sgd=1), tmp_path / 'pread', progress=False)
    b = train(_cfg(data, mode='fixed', epochs_sgd=1, reader='mmap'), tmp_path / 'mmap', progress=False)
    assert all(m.reader == 'pread' for m in a.src._mrcs) and all(m.reader == 'mmap' for m in b.src._mrcs)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    seen = []
    real = Trainer._batches
    def spy(self, bs):
        for idx, y in real(self, bs):
            seen.append(idx.numpy().copy()); yield idx, y
    monkeypatch.setattr(Trainer, '_batches', spy)
    train(_cfg(data, mode='fixed', epochs_sgd=1, shuffle_chunk=8, shuffle_buffer=2), tmp_path / 'buf', progress=False)
    allseen = np.concatenate(seen)
    assert sorted(allseen.tolist()) == list(range(128))
    assert all(len(set(s // 8)) <= 2 for s in seen)  # a batch of 16 from a buffer of 2 chunks of 8


def test_decode_budget_chunks_without_changing_results():
    "TrainConfig.decode_max_elems bounds decoder activations per call; chunked slices equal unchunked ones."
    import drgnai_nb.models as M
    from drgnai_nb.lattice import Lattice
    from drgnai_nb.so3 import random_rotations
    from drgnai_nb.train import TrainConfig
    m = M.make_volume(M.VolumeConfig(16, z_dim=2, hidden_dim=32, pe_dim=8)); m.eval()
    lat, R = Lattice(17), random_rotations(5, torch.Generator().manual_seed(0))
    z = torch.randn(5, 2)
    with torch.no_grad():
        full = M.render_slices(m, lat.coords, R, z, max_elems=2**30)
        small = M.render_slices(m, lat.coords, R, z, max_elems=2**12)  # 64-point chunks
    torch.testing.assert_close(full, small, atol=1e-5, rtol=1e-5)
    assert TrainConfig(particles='x', search_max_elems=2**20).hps.max_chunk == 2**20
    with pytest.raises(DrgnaiInputError, match='decode_max_elems'): TrainConfig(particles='x', decode_max_elems=100)
