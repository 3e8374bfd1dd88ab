"""Hypervolume models: shapes, mask, determinism, the eval_volume convention, voxel round trips, fitting, FLOPs,
checkpoints and MRC output."""
import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from drgnai_nb.forward import volume_to_ht, slice_volume
from drgnai_nb.io import DrgnaiInputError, read_mrc
from drgnai_nb.lattice import Lattice
from drgnai_nb.metrics import fsc
from drgnai_nb.models import (VolumeConfig, GaussianFourierFeatures, GeomFourierFeatures, ResidMLP, NeuralVolume,
                              VoxelVolume, make_volume, flops_per_point, flops_per_image, eval_volume, volume_apix,
                              write_volume)
from drgnai_nb.simulate import builtin_molecule, blob_volume
from drgnai_nb.so3 import random_rotations


@pytest.fixture(scope='module')
def vol32():
    return blob_volume(builtin_molecule(32), 32)


def smooth_volume(D, seed=0):
    "A few wide Gaussian blobs: negligible power beyond |k| = 0.5 (so the radius mask hardly matters)."
    g = torch.Generator().manual_seed(seed)
    ax = torch.arange(D, dtype=torch.float64) - D // 2
    z, y, x = torch.meshgrid(ax, ax, ax, indexing='ij')
    v = torch.zeros(D, D, D, dtype=torch.float64)
    for _ in range(4):
        c = (torch.rand(3, generator=g, dtype=torch.float64) - 0.5) * D * 0.4
        v += torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * 2.5 ** 2))
    return v.float()


def test_defaults_are_drgnai():
    c = VolumeConfig(128)
    assert (c.kind, c.layers, c.hidden_dim, c.pe_type, c.pe_dim, c.feat_sigma, c.domain) == \
        ('neural', 3, 256, 'gaussian', 64, 0.5, 'hartley')
    c = VolumeConfig.cpu(64)
    assert (c.layers, c.hidden_dim, c.pe_dim) == (3, 128, 32)
    m = NeuralVolume(VolumeConfig(64, z_dim=4, symmetric=False))  # DRGN-AI's single-output Hartley decoder
    assert m.mlp.first.in_features == 6 * 64 + 4 and len(m.mlp.hidden) == 3 and m.mlp.out.out_features == 1
    assert NeuralVolume(VolumeConfig(64, z_dim=4)).mlp.out.out_features == 2  # our default: (a, b) per pair ±k


@pytest.mark.parametrize('kw, field', [(dict(D=31), 'D'), (dict(D=32, kind='mesh'), 'kind'), (dict(D=32, z_dim=-1), 'z_dim'),
                                       (dict(D=32, kind='voxel', z_dim=2), 'z_dim'), (dict(D=32, pe_type='nerf'), 'pe_type'),
                                       (dict(D=32, feat_sigma=0.0), 'feat_sigma'), (dict(D=32, domain='fourier'), 'domain'),
                                       (dict(D=32, mask_radius=0.9), 'mask_radius'), (dict(D=32, hidden_dim=0), 'hidden_dim')])
def test_config_validation(kw, field):
    with pytest.raises(DrgnaiInputError, match=f'VolumeConfig.{field}'):
        VolumeConfig(**kw)


def test_shapes_homogeneous():
    m = NeuralVolume(VolumeConfig.cpu(32))
    for shape in [(50, 3), (4, 50, 3), (4, 6, 50, 3)]:
        assert m(torch.rand(*shape) - 0.5).shape == shape[:-1]
    with pytest.raises(ValueError): m(torch.rand(4, 50, 3), torch.randn(4, 2))
    v = VoxelVolume(VolumeConfig(32, kind='voxel'))
    for shape in [(50, 3), (4, 50, 3), (4, 6, 50, 3)]:
        assert v(torch.rand(*shape) - 0.5).shape == shape[:-1]
    with pytest.raises(ValueError): v(torch.rand(4, 50, 3), torch.randn(4, 2))


def test_shapes_heterogeneous_and_z_pairing():
    torch.manual_seed(0)
    m = NeuralVolume(VolumeConfig.cpu(32, z_dim=3, symmetric=False))
    z = torch.randn(4, 3)
    k = torch.rand(4, 50, 3) - 0.5
    out = m(k, z)
    assert out.shape == (4, 50)
    assert m(k[0], z).shape == (4, 50)  # shared coordinates, one row per conformation
    assert m(k[:, None].expand(-1, 5, -1, -1), z).shape == (4, 5, 50)
    # image b is paired with z[b]: evaluating one image alone gives the same row
    torch.testing.assert_close(m(k[2:3], z[2:3]), out[2:3], rtol=1e-5, atol=1e-6)
    # and the split first layer equals concatenation
    cat = torch.cat([m.enc(k), z[:, None].expand(-1, 50, -1)], -1)
    mask = (k.square().sum(-1) <= (0.5 + 1e-4) ** 2).float()  # the model's mask, with its round-off tolerance
    torch.testing.assert_close(out, m.mlp(cat)[..., 0] * mask, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError): m(k)


def test_zero_outside_radius():
    k = torch.randn(2000, 3)
    k = k / k.norm(dim=-1, keepdim=True) * (torch.rand(2000, 1) * 0.8)
    outside = k.norm(dim=-1) > 0.5 + 1e-3
    for m in [NeuralVolume(VolumeConfig.cpu(32)), NeuralVolume(VolumeConfig.cpu(32, z_dim=2)),
              VoxelVolume.from_ht(torch.randn(33, 33, 33))]:
        z = torch.randn(1, 2) if m.z_dim else None
        out = m(k[None], z)[0]
        assert (out[outside] == 0).all() and (out[~outside] != 0).float().mean() > 0.9
    m = NeuralVolume(VolumeConfig.cpu(32, mask_radius=0.25))
    assert (m(k)[k.norm(dim=-1) > 0.2501] == 0).all()
    m = NeuralVolume(VolumeConfig.cpu(32, mask_radius=None))
    assert (m(k)[outside] != 0).all()


def test_determinism_with_seed():
    k = torch.rand(3, 40, 3) - 0.5
    a, b = NeuralVolume(VolumeConfig.cpu(32, seed=7)), NeuralVolume(VolumeConfig.cpu(32, seed=7))
    torch.manual_seed(123)  # the global RNG must not matter...
    c = NeuralVolume(VolumeConfig.cpu(32, seed=8))
    state = torch.random.get_rng_state()
    NeuralVolume(VolumeConfig.cpu(32, seed=7))
    assert torch.equal(state, torch.random.get_rng_state())  # ...and is left untouched
    assert torch.equal(a(k), b(k)) and torch.equal(a.enc.B, b.enc.B)
    assert not torch.allclose(a(k), c(k)) and not torch.allclose(a.enc.B, c.enc.B)
    va, vb = VoxelVolume(VolumeConfig(16, kind='voxel', seed=3)), VoxelVolume(VolumeConfig(16, kind='voxel', seed=3))
    assert torch.equal(va.vol, vb.vol)


def test_gaussian_features_match_drgnai_scaling():
    "sin/cos of (ω·k)·(D_lat // 2), ω ~ N(0, σ²) (3·pe_dim, 3), D_lat = box + 1 — written as 2π B k with B in pixels."
    D, pe, sig = 64, 16, 0.5
    enc = GaussianFourierFeatures(D, pe, sig, seed=5)
    omega = torch.randn(3 * pe, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * sig
    k = (torch.rand(100, 3, dtype=torch.float64) - 0.5)
    ph = (k @ omega.T) * ((D + 1) // 2)
    want = torch.cat([torch.sin(ph), torch.cos(ph)], -1).float()
    torch.testing.assert_close(enc(k.float()), want, rtol=0, atol=2e-4)
    assert enc.out_dim == 6 * pe
    # geom: per-axis angular frequencies D/2 ... 1, log-spaced
    g = GeomFourierFeatures(D, 8)
    w = g.B.norm(dim=-1)[:8] * 2 * math.pi
    torch.testing.assert_close(w[[0, -1]], torch.tensor([D / 2, 1.0]))
    assert GaussianFourierFeatures(D, 4, include_coords=True).out_dim == 6 * 4 + 3


def test_voxel_reproduces_known_volume(vol32):
    "A voxel model built from volume_to_ht(vol) evaluates back to vol (no mask: exact; default mask: smooth volumes)."
    vox = VoxelVolume.from_ht(volume_to_ht(vol32), VolumeConfig(32, kind='voxel', mask_radius=None))
    torch.testing.assert_close(eval_volume(vox), vol32, rtol=0, atol=1e-4 * vol32.abs().max().item())
    sv = smooth_volume(32)
    vox = VoxelVolume.from_ht(volume_to_ht(sv))
    assert ((eval_volume(vox) - sv).norm() / sv.norm()).item() < 1e-3
    # its slices equal slice_volume of the same Hartley volume
    R = random_rotations(5, torch.Generator().manual_seed(0))
    lat = Lattice(33)
    k = lat.coords[lat.get_circular_mask(15)]
    torch.testing.assert_close(vox(k @ R), slice_volume(volume_to_ht(sv), R, k), rtol=1e-4, atol=1e-3)


def test_eval_volume_convention():
    "Model output at (x, y, z) is voxel [z, y, x] of volume_to_ht(eval_volume(model)); slices at k @ R agree."
    m = NeuralVolume(VolumeConfig.cpu(32, seed=1))
    vht = volume_to_ht(eval_volume(m))
    M = 33
    ax = torch.linspace(-0.5, 0.5, M)
    # one explicit asymmetric point
    i, j, l = 20, 9, 27  # [z, y, x] indices
    p = torch.tensor([[ax[l], ax[j], ax[i]]])
    torch.testing.assert_close(vht[i, j, l], m(p)[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(vht[l, j, i], m(p)[0], atol=1e-3)  # the transposed index is something else
    # all lattice points strictly inside the sphere
    z, y, x = torch.meshgrid(ax, ax, ax, indexing='ij')
    pts = torch.stack([x, y, z], -1).reshape(-1, 3)
    inside = pts.norm(dim=-1) < 0.5 - 1e-3
    torch.testing.assert_close(vht.reshape(-1)[inside], m(pts[inside]), rtol=1e-3, atol=1e-4)
    # central slices for lattice-preserving rotations (signed permutations, det +1) match exactly
    R = torch.tensor([[[0., 1, 0], [0, 0, 1], [1, 0, 0]], [[0., 0, -1], [0, 1, 0], [1, 0, 0]], [[-1., 0, 0], [0, -1, 0], [0, 0, 1]]])
    assert torch.allclose(torch.det(R), torch.ones(3))
    k = Lattice(33).coords
    k = k[k.norm(dim=-1) < 0.5 - 1e-3]
    torch.testing.assert_close(slice_volume(vht, R, k), m(k @ R), rtol=1e-3, atol=1e-4)


def test_eval_volume_heterogeneous_and_chunking():
    m = NeuralVolume(VolumeConfig.cpu(16, z_dim=2))
    z = torch.randn(3, 2)
    vs = eval_volume(m, z=z, batch_points=997)
    assert vs.shape == (3, 16, 16, 16) and vs.dtype == torch.float32
    for i in range(3):
        torch.testing.assert_close(eval_volume(m, z=z[i]), vs[i], rtol=1e-4, atol=1e-5)
    with pytest.raises(DrgnaiInputError): eval_volume(m)
    with pytest.raises(DrgnaiInputError): eval_volume(NeuralVolume(VolumeConfig.cpu(16)), z=torch.randn(2))
    assert m.training  # training mode restored


def test_eval_volume_norm_and_downsample():
    sv = smooth_volume(32)
    vox = VoxelVolume.from_ht(volume_to_ht(sv) / 5.0)
    torch.testing.assert_close(eval_volume(vox, norm=(0.0, 5.0)), eval_volume(VoxelVolume.from_ht(volume_to_ht(sv))),
                               rtol=1e-4, atol=1e-5)
    # Fourier-cropped to 16 px: same density values on the coarse grid (every other voxel), mass preserved
    v16 = eval_volume(VoxelVolume.from_ht(volume_to_ht(sv)), D=16)
    assert v16.shape == (16, 16, 16)
    assert abs(v16.sum() * 8 / sv.sum() - 1) < 1e-3
    assert ((v16 - sv[::2, ::2, ::2]).norm() / sv[::2, ::2, ::2].norm()).item() < 0.05
    assert volume_apix(vox, 1.5, 16) == 3.0 and volume_apix(vox, 1.5) == 1.5


def test_write_volume(tmp_path):
    m = NeuralVolume(VolumeConfig.cpu(16))
    p = write_volume(tmp_path / 'v.mrc', m, Apix=2.5)
    arr, info = read_mrc(p)
    np.testing.assert_allclose(arr, eval_volume(m).numpy(), rtol=0, atol=1e-6)
    assert abs(info.Apix - 2.5) < 1e-4 and info.is_volume and arr.shape == (16, 16, 16)
    arr, info = read_mrc(write_volume(tmp_path / 'v8.mrc', m, Apix=2.5, D=8))
    assert arr.shape == (8, 8, 8) and abs(info.Apix - 5.0) < 1e-4
    mz = NeuralVolume(VolumeConfig.cpu(16, z_dim=2))
    with pytest.raises(DrgnaiInputError): write_volume(tmp_path / 'bad.mrc', mz, z=torch.randn(2, 2))
    assert not (tmp_path / 'bad.mrc').exists()


def _fit(model, vol, steps, lr, n_slices=300, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = vol.shape[-1]
    Rs = random_rotations(n_slices, g)
    lat = Lattice(D + 1)
    k = lat.coords[lat.get_circular_mask(D // 2)]
    Y = slice_volume(volume_to_ht(vol), Rs, k)
    sd = Y.std().item()
    Y = Y / sd
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        i = torch.randint(0, n_slices, (batch,), generator=g)
        loss = F.mse_loss(model(k @ Rs[i]), Y[i])
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    return losses, sd


def test_tiny_fit_reduces_loss(vol32):
    torch.manual_seed(0)
    model = NeuralVolume(VolumeConfig.cpu(32))
    losses, sd = _fit(model, vol32, 200, 1e-3)
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    assert last < first / 30, (first, last)
    res = fsc(eval_volume(model, norm=(0.0, sd)), vol32).resolution(0.5)
    assert res.px < 4.0, res


def test_voxel_fit_reduces_loss(vol32):
    model = VoxelVolume(VolumeConfig(32, kind='voxel'))
    losses, _ = _fit(model, vol32, 100, 1e-3)
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) / 10


def test_flops_manual_count():
    cfg = VolumeConfig(32, layers=2, hidden_dim=20, pe_dim=5, z_dim=3, symmetric=False)
    m = NeuralVolume(cfg)
    F_ = 3 * 5  # frequency vectors
    manual = 2 * 3 * F_ + 2 * (2 * F_) * 20 + 2 * 2 * 20 * 20 + 2 * 20 * 1
    assert flops_per_point(m) == manual
    assert flops_per_image(m, 100) == 100 * manual + 2 * 3 * 20
    # torch's own FLOP counter over the real forward agrees (matmuls only)
    with FlopCounterMode(display=False) as fc:
        m(torch.rand(4, 100, 3) - 0.5, torch.randn(4, 3))
    assert fc.get_total_flops() == 4 * flops_per_image(m, 100)
    mh = NeuralVolume(VolumeConfig(32, symmetric=False))  # DRGN-AI default: 384 -> 256, 3 x 256², 256 -> 1, encoding 192 x 3
    assert flops_per_point(mh) == 2 * (192 * 3 + 384 * 256 + 3 * 256 * 256 + 256)
    ms = NeuralVolume(VolumeConfig(32))  # symmetric: two outputs, one evaluation per pair of points ±k
    assert flops_per_point(ms) == 2 * (192 * 3 + 384 * 256 + 3 * 256 * 256 + 2 * 256)
    assert flops_per_image(ms, 101) == 51 * flops_per_point(ms)
    assert flops_per_point(make_volume(VolumeConfig(32, kind='voxel'))) == 16


def test_state_dict_round_trip(tmp_path):
    for cfg in [VolumeConfig.cpu(16, z_dim=2, seed=1), VolumeConfig.cpu(16, pe_type='geom', seed=1), VolumeConfig(16, kind='voxel', seed=1)]:
        m = make_volume(cfg)
        with torch.no_grad():
            for p in m.parameters(): p.add_(0.01 * torch.randn_like(p))
        torch.save({'cfg': cfg.to_dict(), 'state': m.state_dict()}, tmp_path / 'ck.pt')
        ck = torch.load(tmp_path / 'ck.pt', weights_only=True)
        m2 = make_volume(VolumeConfig(**{**ck['cfg'], 'seed': 99}))  # different init, same architecture
        assert 'enc.B' in ck['state'] or cfg.kind == 'voxel'
        m2.load_state_dict(ck['state'])
        k = torch.rand(2, 30, 3) - 0.5
        z = torch.randn(2, cfg.z_dim) if cfg.z_dim else None
        assert torch.equal(m(k, z), m2(k, z))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    m = NeuralVolume(VolumeConfig.cpu(32, z_dim=2))
    k, z = torch.rand(4, 200, 3) - 0.5, torch.randn(4, 2)
    want = m(k, z)
    mc = m.cuda()
    torch.testing.assert_close(mc(k.cuda(), z.cuda()).cpu(), want, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(eval_volume(mc, z=z[0]).cpu(), eval_volume(m.cpu(), z=z[0]), rtol=1e-3, atol=1e-4)
