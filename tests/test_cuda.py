"""The GPU paths: training on a CUDA GPU against the same runs on the CPU (the map, the poses), the pose search on the
GPU against the CPU's in float32 and under bf16 autocast, fp16 training with its gradient scaler, and the command line's
train → analyze on a GPU. Every test here is marked `cuda` and skipped where no CUDA GPU is found (tests/conftest.py);
the rest of the suite runs on the GPU too when one is present, since training picks `device='auto'`."""
import numpy as np
import pytest
import torch
from drgnai_nb.io import load_poses, load_pkl, read_mrc
from drgnai_nb.metrics import fsc, pose_error
from drgnai_nb.simulate import SimConfig, simulate_to_dir
from drgnai_nb.train import TrainConfig, train, latest_epoch

pytestmark = pytest.mark.cuda

SMALL = dict(dim=64, pe_dim=16, layers=2, lr=1e-3, l_start=6, l_end=12, t_extent=2.0, t_n_grid=3, batch_size_known_poses=32,
             batch_size_sgd=32, hps_search_batch=64, batch_size_hps=16)


@pytest.fixture(scope='module')
def homo(tmp_path_factory):
    d = tmp_path_factory.mktemp('cuda_homo')
    simulate_to_dir(SimConfig(n_images=512, D=32, snr=1.0, seed=0, shift_px=1.0), d, progress=False)
    return d


def _cfg(d, **kw):
    return TrainConfig.preset('cpu', particles=str(d / 'particles.mrcs'), ctf=str(d / 'ctf.pkl'), **{**SMALL, **kw})


def _fsc05(run, epoch, truth):
    "FSC = 0.5 crossing of a run's map against the true map, as a fraction of Nyquist."
    vol, _ = read_mrc(run / f'reconstruct.{epoch}.mrc'); ref, _ = read_mrc(truth / 'vol.mrc')
    return 2 * fsc(vol, ref).resolution(0.5).freq


def test_fixed_poses_gpu_matches_cpu(homo, tmp_path):
    "Mode 'fixed' in float32 on the GPU learns the CPU's map: the same resolution against the truth, within one shell."
    res = {}
    for dev in ('cpu', 'cuda'):
        tr = train(_cfg(homo, mode='fixed', poses=str(homo / 'poses.pkl'), epochs_sgd=4, device=dev, amp='off'),
                   tmp_path / dev, progress=False)
        assert tr.device.type == dev and next(tr.model.parameters()).device.type == dev
        res[dev] = _fsc05(tmp_path / dev, tr.epoch, homo)
    assert res['cpu'] > 0.5, res  # the run learned a map at all
    assert abs(res['cuda'] - res['cpu']) < 2 / 32, res  # 1 shell of 16 = 2/32 of Nyquist


def test_pose_search_gpu_matches_cpu():
    """The same search on the GPU finds the CPU's poses (float32; near-ties aside), and under bf16 (the cache's samples
    rounded to 8 bits of mantissa, the scores kept in float32) it moves none by more than two finest-grid steps."""
    from drgnai_nb.models import VolumeConfig, make_volume, render_slices
    from drgnai_nb.lattice import Lattice
    from drgnai_nb.so3 import random_rotations, geodesic_distance
    from drgnai_nb.hps import HPSConfig, pose_search
    from drgnai_nb.train import cache_from_model
    D = 32
    vol = make_volume(VolumeConfig(D, z_dim=0, layers=2, hidden_dim=64, pe_dim=16, seed=1))
    R = random_rotations(96, torch.Generator().manual_seed(2))
    lat = Lattice(D + 1)
    with torch.no_grad(): imgs = render_slices(vol, lat.coords, R).reshape(-1, D + 1, D + 1)
    hc = HPSConfig(base_order=1, n_levels=3, l_start=6, l_end=12, n_kept=4, t_extent=2.0, t_n_grid=3)
    out = {}
    with torch.no_grad():
        out['cpu'] = pose_search(imgs, None, cache_from_model(vol, D, 12, amp='off'), hc, lat)
        vg = vol.cuda()
        for amp in ('off', 'bf16'):
            r = pose_search(imgs.cuda(), None, cache_from_model(vg, D, 12, amp=amp), hc, Lattice(D + 1, device='cuda'))
            assert r.rot.device.type == 'cuda'
            out[amp] = r
    a, b, c = out['cpu'], out['off'], out['bf16']
    same = ((a.s2 == b.s2.cpu()) & (a.psi == b.psi.cpu())).float().mean()
    assert same >= 0.95, float(same)
    step = 360 / (6 * 2 ** b.order)  # the finest level's in-plane step, degrees (3.75° at order 4)
    d_bf16 = torch.rad2deg(geodesic_distance(b.rot, c.rot)).cpu()
    assert float(d_bf16.max()) < 2 * step + 1e-3 and float((d_bf16 == 0).float().mean()) >= 0.8, (float(d_bf16.max()), step)
    # against the truth: the search found the (off-grid) poses the images were rendered at, to the grid's resolution
    err = torch.rad2deg(geodesic_distance(b.rot.cpu(), R))
    assert float(err.median()) < 2 * step, float(err.median())


def test_fp16_training_with_scaler(homo, tmp_path):
    "fp16 autocast with its gradient scaler (GPUs without bf16) trains the map as float32 does, sparse pose tables included."
    res, rot = {}, {}
    for amp in ('off', 'fp16'):
        tr = train(_cfg(homo, mode='refine', poses=str(homo / 'poses.pkl'), epochs_sgd=3, device='cuda', amp=amp),
                   tmp_path / amp, progress=False)
        assert all(np.isfinite(h['loss']) for h in tr.history)
        res[amp] = _fsc05(tmp_path / amp, tr.epoch, homo)
        r, t = load_poses(tmp_path / amp / f'pose.{tr.epoch}.pkl'); r0, t0 = load_poses(homo / 'poses.pkl')
        rot[amp] = float(np.median(pose_error(r, r0, try_mirror=False).rot))
    # the same map (within one shell) and the same poses: refinement from the true poses with a map learned from scratch
    # drifts them by a few degrees (4.5° in float32 on the CPU), as much in fp16 as in float32
    assert abs(res['fp16'] - res['off']) < 2 / 32, res
    assert rot['off'] < 8 and abs(rot['fp16'] - rot['off']) < 1.5, rot


def test_cli_abinit_heterogeneous_on_gpu(tmp_path):
    "`train` without --device picks the GPU; an ab initio heterogeneous run (bf16 by default) then `analyze` both run there."
    from drgnai_nb.cli import main
    d = tmp_path / 'sim'
    simulate_to_dir(SimConfig(n_images=256, D=32, snr=1.0, seed=0, shift_px=1.0, heterogeneity='discrete', n_states=2), d,
                    progress=False)
    sets = [f'{k}={v}' for k, v in {**SMALL, 'n_imgs_pretrain': 256, 'n_imgs_pose_search': 512, 'epochs_sgd': 2}.items()]
    code = main(['train', str(tmp_path / 'run'), '--particles', str(d / 'particles.mrcs'), '--ctf', str(d / 'ctf.pkl'),
                 '--zdim', '2', '--preset', 'cpu', '--set', *sets])
    assert code in (0, None)
    run = tmp_path / 'run'
    log = (run / 'run.log').read_text()
    assert 'cuda' in log, log[:2000]
    e = latest_epoch(run)
    z = load_pkl(run / f'z.{e}.pkl')
    assert z.shape == (256, 2) and np.isfinite(z).all()
    code = main(['analyze', str(run), '--ksample', '4', '--pc', '1', '--n-per-pc', '2', '--truth', str(d)])
    assert code in (0, None)
    vols = sorted((run / f'analyze.{e}').rglob('*.mrc'))
    assert vols and all(np.isfinite(read_mrc(v)[0]).all() for v in vols)


def test_distributed_needs_one_gpu_per_process(monkeypatch):
    "More torchrun processes on this machine than GPUs is refused with a clear error before the NCCL group is joined."
    from drgnai_nb.distributed import init_distributed
    from drgnai_nb.io import DrgnaiInputError
    n = torch.cuda.device_count() + 1
    for k, v in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n), MASTER_ADDR='127.0.0.1',
                     MASTER_PORT='29599').items(): monkeypatch.setenv(k, v)
    with pytest.raises(DrgnaiInputError, match=f'{n} processes on this machine but {n - 1} CUDA GPU'):
        init_distributed('auto')
    assert not torch.distributed.is_initialized()
