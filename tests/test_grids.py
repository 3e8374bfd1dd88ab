"""Tests of drgnai_nb.grids: HEALPix NESTED centres, the Hopf SO(3) grid, its in-plane split, neighbours, shift grids."""
import math
import numpy as np
import pytest
import torch

from drgnai_nb.grids import (pix2ang_nest, pix2vec_nest, grid_sizes, s1_grid, s2_grid, hopf_to_quat, hopf_to_R,
                             split_index, flat_index, grid_pose, grid_SO3, so3_grid_split, inplane_coords,
                             rotate_slices, get_neighbors, shift_grid_1d, base_shift_grid, shift_neighbors,
                             grid_resolution)
from drgnai_nb.so3 import quat_to_R, rot_z, geodesic_distance, random_quaternions

F64 = torch.float64

# healpy.pix2ang(2, arange(48), nest=True), as cached by cryoDRGN (cryodrgn/healpy_grid.json)
_T = [1.2309594173407747, 0.8410686705679303, 0.8410686705679303, 0.4111378623223478]
_E = [1.9106332362490186, 1.5707963267948966, 1.5707963267948966, 1.2309594173407747]
_S = [2.7304547912674453, 2.300523983021863, 2.300523983021863, 1.9106332362490186]
HEALPY_NSIDE2_THETA = _T * 4 + _E * 4 + _S * 4
HEALPY_NSIDE2_PHI = [
    0.7853981633974483, 1.1780972450961724, 0.39269908169872414, 0.7853981633974483,
    2.356194490192345, 2.748893571891069, 1.9634954084936205, 2.356194490192345,
    3.926990816987241, 4.319689898685965, 3.534291735288517, 3.9269908169872414,
    5.497787143782138, 5.890486225480862, 5.105088062083413, 5.497787143782138,
    0.0, 0.39269908169872414, 5.890486225480862, 0.0,
    1.5707963267948966, 1.9634954084936205, 1.1780972450961724, 1.5707963267948966,
    3.141592653589793, 3.534291735288517, 2.748893571891069, 3.141592653589793,
    4.71238898038469, 5.105088062083413, 4.319689898685965, 4.71238898038469,
    0.7853981633974483, 1.1780972450961724, 0.39269908169872414, 0.7853981633974483,
    2.356194490192345, 2.748893571891069, 1.9634954084936205, 2.356194490192345,
    3.9269908169872414, 4.319689898685965, 3.534291735288517, 3.926990816987241,
    5.497787143782138, 5.890486225480862, 5.105088062083413, 5.497787143782138]


def _yershova_quat(theta, phi, psi):
    "Hopf-coordinate quaternion of Yershova et al. (2010), the paper's formula."
    ct, st = torch.cos(theta / 2), torch.sin(theta / 2)
    return torch.stack([ct * torch.cos(psi / 2), ct * torch.sin(psi / 2),
                        st * torch.cos(phi + psi / 2), st * torch.sin(phi + psi / 2)], -1)


def _nearest_dist(qr, qg, chunk=8192):
    "Geodesic distance (radians) from each of qr (n, 4) to its nearest quaternion in qg (m, 4)."
    best = torch.stack([(qr @ c.T).abs().max(1).values for c in qg.split(chunk)]).max(0).values
    return 2 * torch.acos(best.clamp(max=1))


# ---------------------------------------------------------------- sizes
@pytest.mark.parametrize('order,n_s2,n_psi', [(0, 12, 6), (1, 48, 12), (2, 192, 24), (3, 768, 48)])
def test_grid_sizes(order, n_s2, n_psi):
    assert grid_sizes(order) == (n_s2, n_psi)
    r = grid_resolution(order)
    assert r['n_so3'] == n_s2 * n_psi == 72 * 8**order and r['nside'] == 2**order
    assert math.isclose(r['psi_step_deg'], 360 / n_psi)
    assert s1_grid(order).shape == (n_psi,) and s2_grid(order)[0].shape == (n_s2,)


def test_cryodrgn_base_grid_is_576():
    "cryoDRGN's base grid (order 1): 48 HEALPix directions (nside 2) × 12 in-plane angles."
    q, R = grid_SO3(1)
    assert q.shape == (576, 4) and R.shape == (576, 3, 3)
    assert torch.allclose(s1_grid(1), (torch.arange(12, dtype=F64) + 0.5) * math.pi / 6)


# ---------------------------------------------------------------- HEALPix
def test_pix2ang_nside1_face_centres():
    theta, phi = pix2ang_nest(1, np.arange(12))
    assert torch.allclose(theta.cos(), torch.tensor([2 / 3] * 4 + [0.] * 4 + [-2 / 3] * 4, dtype=F64), atol=1e-12)
    assert torch.allclose(phi, torch.tensor([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7], dtype=F64) * math.pi / 4, atol=1e-12)


def test_pix2ang_matches_healpy_nside2():
    theta, phi = pix2ang_nest(2, torch.arange(48))
    assert torch.allclose(theta, torch.tensor(HEALPY_NSIDE2_THETA, dtype=F64), atol=1e-12)
    assert torch.allclose(phi, torch.tensor(HEALPY_NSIDE2_PHI, dtype=F64), atol=1e-12)


def test_pix2ang_matches_healpy_nside4_samples():
    theta, phi = pix2ang_nest(4, [7, 11, 15, 64, 66, 127, 191])
    assert torch.allclose(theta, torch.tensor([0.6223684885550206, 0.6223684885550206, 0.20448019896853498,
                                               2.0943951023931957, 1.9106332362490186, 1.0471975511965979,
                                               1.7382444060145859], dtype=F64), atol=1e-12)
    assert torch.allclose(phi, torch.tensor([1.3089969389957472, 0.2617993877991494, 0.7853981633974483, 0.0,
                                             6.086835766330223, 4.71238898038469, 5.497787143782138], dtype=F64), atol=1e-12)


@pytest.mark.parametrize('nside', [1, 2, 4, 8, 16, 32])
def test_healpix_rings(nside):
    "4·nside − 1 rings at HEALPix's latitudes, 4i pixels on polar ring i and 4·nside on equatorial rings, none repeated."
    theta, phi = pix2ang_nest(nside, torch.arange(12 * nside**2))
    z = theta.cos()
    rings, inv, counts = torch.unique(torch.round(z * 1e9) / 1e9, return_inverse=True, return_counts=True)
    i = torch.arange(1, 4 * nside)
    assert len(rings) == 4 * nside - 1
    assert torch.equal(counts.flip(0), 4 * torch.minimum(torch.minimum(i, 4 * nside - i), torch.tensor(nside)))
    zi = torch.where(i < nside, 1 - i.double()**2 / (3 * nside**2),
                     torch.where(i > 3 * nside, (4 * nside - i).double()**2 / (3 * nside**2) - 1,
                                 4 / 3 - 2 * i.double() / (3 * nside)))
    assert torch.allclose(rings.flip(0), zi, atol=1e-9)
    # longitudes on each ring are distinct and evenly spaced
    key = inv * 10**6 + torch.round(phi * 1e5).long()
    assert len(torch.unique(key)) == 12 * nside**2
    assert (phi >= 0).all() and (phi < 2 * math.pi).all()


@pytest.mark.parametrize('nside', [4, 16, 32])
def test_healpix_equal_area(nside):
    "Pixel centres are spread uniformly: counts in z-bands follow the band areas (Archimedes), spacing nearly constant."
    v = pix2vec_nest(nside, torch.arange(12 * nside**2))
    n = len(v)
    for a, b in [(-1, -0.5), (-0.5, 0.1), (0.1, 0.8), (0.8, 1.0)]:
        inside = ((v[:, 2] > a) & (v[:, 2] <= b)).sum().item()
        assert abs(inside - n * (b - a) / 2) <= 4 * nside + 4, (a, b, inside, n * (b - a) / 2)
    G = v @ v.T
    G.fill_diagonal_(-2)
    nn = torch.acos(G.max(1).values.clamp(max=1))
    assert nn.max() / nn.min() < 1.35


@pytest.mark.parametrize('nside', [2, 4, 8, 16])
def test_healpix_nesting(nside):
    "Pixels 4p..4p+3 at 2·nside are the sub-pixels of pixel p: nearest parent centre, and they surround it."
    kids = pix2vec_nest(nside, torch.arange(12 * nside**2))
    parents = pix2vec_nest(nside // 2, torch.arange(3 * nside**2))
    assert torch.equal((kids @ parents.T).argmax(1), torch.arange(12 * nside**2) // 4)
    mean = kids.view(-1, 4, 3).mean(1)
    ang = torch.acos((mean / mean.norm(dim=-1, keepdim=True) * parents).sum(-1).clamp(max=1))
    pixel = math.sqrt(4 * math.pi / (3 * nside**2))  # parent pixel size, radians
    assert ang.max() < 0.2 * pixel


def test_pix2ang_vectorised_and_numpy():
    ip = np.array([[0, 5, 47], [12, 30, 2]])
    theta, phi = pix2ang_nest(2, ip)
    assert theta.shape == (2, 3) and phi.shape == (2, 3)
    t2, p2 = pix2ang_nest(2, torch.as_tensor(ip).reshape(-1))
    assert torch.equal(theta.reshape(-1), t2) and torch.equal(phi.reshape(-1), p2)
    assert pix2vec_nest(2, ip).shape == (2, 3, 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match='power of 2'): pix2ang_nest(3, [0])
    with pytest.raises(ValueError, match=r'\[0, 48\)'): pix2ang_nest(2, [48])
    with pytest.raises(ValueError, match='integers'): pix2ang_nest(2, [1.0])
    with pytest.raises(ValueError, match='order'): grid_sizes(-1)
    with pytest.raises(ValueError, match='order'): grid_SO3(1.5)
    with pytest.raises(ValueError, match='in-plane'): grid_pose([0], [12], 1)
    with pytest.raises(ValueError, match='SO\\(3\\) grid'): split_index([576], 1)
    with pytest.raises(ValueError, match='method'): get_neighbors([0], [0], 1, method='nearest')
    with pytest.raises(ValueError, match='last dimension'): shift_neighbors(torch.zeros(3, dtype=torch.long), 0, 10, 7)
    with pytest.raises(ValueError, match='shift grid indices'): shift_neighbors([[7, 0]], 0, 10, 7)
    with pytest.raises(ValueError, match='extent'): base_shift_grid(-1, 7)
    with pytest.raises(ValueError, match='size n'): base_shift_grid(10, 0)


# ---------------------------------------------------------------- SO(3) grid
@pytest.mark.parametrize('order', [0, 1, 2, 3])
def test_rotations_valid(order):
    q, R = grid_SO3(order, F64)
    eye = torch.eye(3, dtype=F64).expand(len(R), 3, 3)
    assert torch.allclose(R @ R.transpose(-1, -2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(len(R), dtype=F64), atol=1e-12)
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(q), dtype=F64)) and (q[:, 0] >= 0).all()
    assert torch.allclose(quat_to_R(q), R, atol=1e-12)
    # no two grid poses coincide (also not as q and -q)
    d = (q @ q.T).abs() if len(q) <= 5000 else (q[:2000] @ q.T).abs()
    assert (d > 1 - 1e-9).sum() == min(len(q), d.shape[0])
    q32, R32 = grid_SO3(order)
    assert q32.dtype == torch.float32 and torch.allclose(R32.double(), R, atol=1e-6)


def test_isometric_to_yershova_grid():
    "Same index order, same pairwise distances as the Hopf grid of Yershova et al./cryoDRGN (order 1)."
    q, _ = grid_SO3(1, F64)
    theta, phi = s2_grid(1)
    psi = s1_grid(1)
    qh = _yershova_quat(theta.repeat_interleave(12), phi.repeat_interleave(12), psi.repeat(48))
    assert torch.allclose((q @ q.T).abs(), (qh @ qh.T).abs(), atol=1e-12)


def test_cryodrgn_matrix_convention():
    "Identity Hopf quaternion maps to diag(1, -1, -1); ψ is in-plane; row 2 is the reflected HEALPix direction."
    assert torch.allclose(hopf_to_R(0., 0., 0.), torch.diag(torch.tensor([1., -1., -1.], dtype=F64)))
    g = torch.Generator().manual_seed(0)
    theta, phi, psi = torch.rand(3, 50, generator=g, dtype=F64) * torch.tensor([[math.pi], [2 * math.pi], [2 * math.pi]], dtype=F64)
    R = hopf_to_R(theta, phi, psi)
    assert torch.allclose(R, rot_z(psi) @ hopf_to_R(theta, phi, torch.zeros_like(psi)), atol=1e-12)
    view = torch.stack([theta.sin() * phi.cos(), -theta.sin() * phi.sin(), -theta.cos()], -1)
    assert torch.allclose(R[:, 2], view, atol=1e-12)
    assert torch.allclose(quat_to_R(hopf_to_quat(theta, phi, psi)), R)


@pytest.mark.parametrize('order', [1, 2])
def test_index_round_trip(order):
    n_s2, n_psi = grid_sizes(order)
    i = torch.arange(n_s2 * n_psi)
    s, j = split_index(i, order)
    assert torch.equal(flat_index(s, j, order), i)
    assert torch.equal(s, i // n_psi) and torch.equal(j, i % n_psi)
    q_all, R_all = grid_SO3(order, F64)
    perm = torch.randperm(len(i), generator=torch.Generator().manual_seed(1))[:100].view(10, 10)
    q, R = grid_pose(*split_index(perm, order), order, F64)
    assert q.shape == (10, 10, 4) and torch.equal(R, R_all[perm]) and torch.equal(q, q_all[perm])


@pytest.mark.parametrize('order', [0, 1, 2])
def test_so3_grid_split(order):
    "Pose s·n_psi + j equals rot_z(psi_j) @ R_s2[s]; the in-plane poses of one direction share its viewing direction."
    n_s2, n_psi = grid_sizes(order)
    R_s2, psi = so3_grid_split(order, F64)
    _, R = grid_SO3(order, F64)
    assert R_s2.shape == (n_s2, 3, 3) and psi.shape == (n_psi,)
    composed = (rot_z(psi)[None] @ R_s2[:, None]).reshape(-1, 3, 3)
    assert torch.allclose(composed, R, atol=1e-12)
    assert torch.allclose(R.view(n_s2, n_psi, 3, 3)[:, :, 2], R_s2[:, None, 2].expand(-1, n_psi, -1), atol=1e-12)
    # the viewing directions are the HEALPix directions rotated by π about x
    v = pix2vec_nest(2**order, torch.arange(n_s2)) * torch.tensor([1., -1., -1.], dtype=F64)
    assert torch.allclose(R_s2[:, 2], v, atol=1e-12)


def test_inplane_coords_identity_exact():
    "k @ (rot_z(ψ) @ R_s2) == inplane_coords(k, ψ) @ R_s2, and rotated coordinates stay in the plane z = 0."
    g = torch.Generator().manual_seed(0)
    k = torch.rand(200, 3, generator=g, dtype=F64) - 0.5
    k[:, 2] = 0
    R_s2, psi = so3_grid_split(1, F64)
    kc = inplane_coords(k, psi)  # (12, 200, 3)
    assert kc.shape == (12, 200, 3) and torch.equal(kc[..., 2], torch.zeros(12, 200, dtype=F64))
    assert torch.allclose(kc[..., :2], inplane_coords(k[:, :2], psi))
    lhs = k @ (rot_z(psi)[None] @ R_s2[:, None])  # (48, 12, 200, 3)
    rhs = kc[None] @ R_s2[:, None]
    assert torch.allclose(lhs, rhs, atol=1e-12)
    # an analytic "volume" sampled both ways
    f = lambda x: torch.exp(-8 * ((x - torch.tensor([0.1, -0.2, 0.05], dtype=F64))**2).sum(-1)) * torch.cos(9 * x[..., 0] * x[..., 2])
    assert torch.allclose(f(lhs), f(rhs), atol=1e-12)


def test_inplane_rotation_of_slices_matches_3d_rotation():
    "The slice of rot_z(ψ) @ R_s2 equals the ψ = 0 slice at rotated coordinates, and ~ the 2-D rotated slice image."
    from drgnai_nb.forward import volume_to_ht, slice_volume
    from drgnai_nb.lattice import Lattice
    D = 32
    ax = torch.arange(D) - D // 2
    zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing='ij')
    blobs = [(0, 0, 0, 10.), (5, -3, 2, 6.), (-4, 4, -5, 8.), (2, 6, 3, 4.)]
    vol = sum(torch.exp(-((xx - a)**2 + (yy - b)**2 + (zz - c)**2) / s) for a, b, c, s in blobs).float()
    vht = volume_to_ht(vol)
    lat = Lattice(D + 1)
    R_s2, psi = so3_grid_split(1)
    _, R = grid_SO3(1)
    disc = lat.get_circular_mask(D // 2 - 1)
    for s in (0, 20, 44):
        full = slice_volume(vht, R[s * 12:(s + 1) * 12], lat.coords)
        via = torch.stack([slice_volume(vht, R_s2[s:s + 1], c)[0] for c in inplane_coords(lat.coords, psi)])
        assert torch.allclose(full, via, atol=1e-4 * full.abs().max())
        img = rotate_slices(slice_volume(vht, R_s2[s:s + 1], lat.coords).view(1, D + 1, D + 1), psi)
        assert img.shape == (1, 12, D + 1, D + 1)
        rel = (img[0].reshape(12, -1)[:, disc] - full[:, disc]).norm(dim=-1) / full[:, disc].norm(dim=-1)
        assert rel.max() < 0.1, rel


def test_rotate_slices_identity_and_quarter_turn():
    y = torch.randn(2, 9, 9, dtype=F64)
    out = rotate_slices(y, torch.tensor([0.0, math.pi / 2], dtype=F64))
    assert torch.allclose(out[:, 0], y, atol=1e-12)
    # ψ = 90°: out(kx, ky) = y((kx, ky) @ [[0, -1], [1, 0]]) = y(ky, -kx) -> out[r, c] = y[8 - c, r]
    assert torch.allclose(out[:, 1], y.flip(-2).transpose(-1, -2), atol=1e-12)


# ---------------------------------------------------------------- uniformity
@pytest.mark.parametrize('order,cover_deg,step_deg', [(1, 26.0, 30.0), (2, 12.5, 15.0), (3, 6.5, 7.5)])
def test_uniformity_and_coverage(order, cover_deg, step_deg):
    q, _ = grid_SO3(order, F64)
    qr = random_quaternions(1000, torch.Generator().manual_seed(order), F64)
    d = torch.rad2deg(_nearest_dist(qr, q))
    assert d.max() < cover_deg  # every rotation is within the grid's resolution of some grid pose
    assert d.mean() < 0.6 * step_deg
    sub = q[torch.randperm(len(q), generator=torch.Generator().manual_seed(0))[:300]]
    dot = (sub @ q.T).abs()
    dot[dot > 1 - 1e-12] = 0
    nn = torch.rad2deg(2 * torch.acos(dot.max(1).values))
    assert nn.max() <= step_deg + 1e-6 and nn.min() > 0.8 * step_deg  # nearly constant spacing, ≈ the ψ step


# ---------------------------------------------------------------- neighbours
@pytest.mark.parametrize('order', [0, 1, 2])
def test_neighbors_structure(order):
    n_s2, n_psi = grid_sizes(order)
    s, j = split_index(torch.arange(n_s2 * n_psi), order)
    s2n, psin = get_neighbors(s, j, order)
    assert s2n.shape == psin.shape == (len(s), 8) and s2n.dtype == torch.long
    assert (psin >= 0).all() and (psin < 2 * n_psi).all()
    # 4 NESTED sub-pixels, each with 2 consecutive in-plane indices
    assert torch.equal(s2n.view(-1, 4, 2), (4 * s[:, None, None] + torch.arange(4)[:, None]).expand(-1, 4, 2))
    assert torch.equal((psin.view(-1, 4, 2)[..., 1] - psin.view(-1, 4, 2)[..., 0]) % (2 * n_psi),
                       torch.ones(len(s), 4, dtype=torch.long))
    # children map back to the parent's direction
    assert torch.equal(s2n // 4, s[:, None].expand(-1, 8))
    # no duplicates among the 8
    fl = flat_index(s2n, psin, order + 1)
    assert (fl.sort(-1).values.diff(dim=-1) > 0).all()


@pytest.mark.parametrize('order', [1, 2, 3])
def test_neighbors_close_to_parent(order):
    "Neighbours lie closer to their parent than the parent order's grid spacing; better than cryoDRGN's rule."
    n_s2, n_psi = grid_sizes(order)
    i = torch.arange(n_s2 * n_psi)
    if order == 3: i = i[::7]
    s, j = split_index(i, order)
    _, Rp = grid_pose(s, j, order, F64)
    step = 2 * math.pi / n_psi
    worst = {}
    for method in ('transport', 'cryodrgn'):
        _, Rn = grid_pose(*get_neighbors(s, j, order, method), order + 1, F64)
        d = geodesic_distance(Rn, Rp[:, None])
        worst[method] = d.max().item()
        assert d.min() > 0.2 * step  # children are new poses, not the parent
    assert worst['transport'] < 0.7 * step
    assert worst['transport'] < worst['cryodrgn']


def test_neighbors_vectorised_shapes():
    s = torch.randint(0, 192, (5, 3), generator=torch.Generator().manual_seed(0))
    j = torch.randint(0, 24, (5, 3), generator=torch.Generator().manual_seed(1))
    for method in ('transport', 'cryodrgn'):
        a, b = get_neighbors(s, j, 2, method)
        c, d = get_neighbors(s.reshape(-1), j.reshape(-1), 2, method)
        assert a.shape == (5, 3, 8) and torch.equal(a.reshape(-1, 8), c) and torch.equal(b.reshape(-1, 8), d)
    q, R = grid_pose(a, b, 3)
    assert q.shape == (5, 3, 8, 4) and R.shape == (5, 3, 8, 3, 3)


def test_hierarchical_descent_reaches_fine_grid():
    "A search keeping 4 poses per level, from order 1 to 3, finds a pose as near as the order-3 grid allows."
    qr = random_quaternions(500, torch.Generator().manual_seed(7), F64)
    q1, _ = grid_SO3(1, F64)
    K = 4
    errs = {}
    for method in ('transport', 'cryodrgn'):
        s, j = split_index((qr @ q1.T).abs().topk(K, 1).indices, 1)
        for o in (1, 2):
            S, J = (x.reshape(len(qr), -1) for x in get_neighbors(s, j, o, method))
            qn, _ = grid_pose(S, J, o + 1, F64)
            dot = (qn * qr[:, None]).sum(-1).abs()
            top = dot.topk(K, 1).indices
            s, j = S.gather(1, top), J.gather(1, top)
        errs[method] = torch.rad2deg(2 * torch.acos(dot.max(1).values.clamp(max=1)))
    q3, _ = grid_SO3(3, F64)
    best = torch.rad2deg(_nearest_dist(qr, q3))
    assert errs['transport'].max() < 7.5  # the order-3 grid step
    assert (errs['transport'] <= best + 1e-6).float().mean() > 0.95  # almost always the true nearest order-3 pose
    assert errs['transport'].mean() <= errs['cryodrgn'].mean()


# ---------------------------------------------------------------- shift grids
def test_base_shift_grid():
    g = base_shift_grid(10, 7)
    assert g.shape == (49, 2) and g.dtype == torch.float32
    x = shift_grid_1d(10, 7)
    assert torch.allclose(x, (torch.arange(7) + 0.5) * 20 / 7 - 10)
    assert torch.allclose(g[:, 0], x.repeat(7)) and torch.allclose(g[:, 1], x.repeat_interleave(7))  # x fastest
    assert torch.equal(g[24], torch.zeros(2)) and torch.allclose(g.mean(0), torch.zeros(2), atol=1e-6)
    assert g.abs().max() < 10
    # DRGN-AI's default base shift grid: extent 20 px, 7 points, level base_healpy - 1 = 1
    assert base_shift_grid(20, 7, 1).shape == (196, 2)
    assert torch.equal(base_shift_grid(0, 3), torch.zeros(9, 2))


@pytest.mark.parametrize('level', [0, 1, 2, 3])
def test_shift_steps_halve(level):
    x0, x1 = shift_grid_1d(8, 5, level), shift_grid_1d(8, 5, level + 1)
    step0, step1 = (x0[1] - x0[0]).item(), (x1[1] - x1[0]).item()
    assert math.isclose(step0, 16 / (5 * 2**level), rel_tol=1e-5) and math.isclose(step1, step0 / 2, rel_tol=1e-5)
    N = 5 * 2**level
    iy, ix = torch.meshgrid(torch.arange(N), torch.arange(N), indexing='ij')
    xy = torch.stack([ix.reshape(-1), iy.reshape(-1)], -1)
    kids, t = shift_neighbors(xy, level, 8, 5)
    assert kids.shape == (N * N, 4, 2) and t.shape == (N * N, 4, 2)
    parent = base_shift_grid(8, 5, level)
    assert torch.allclose(t.mean(1), parent, atol=1e-5)  # children centred on the parent
    assert torch.allclose((t - parent[:, None]).abs(), torch.full_like(t, step0 / 4), atol=1e-5)  # a quarter step away
    fine = base_shift_grid(8, 5, level + 1)
    assert torch.allclose(fine[kids[..., 1] * 2 * N + kids[..., 0]], t)  # indices are level+1 grid indices
    assert len(torch.unique(kids.reshape(-1, 2), dim=0)) == 4 * N * N  # children partition the finer grid


def test_shift_neighbors_vectorised():
    xy = torch.randint(0, 7, (3, 5, 2), generator=torch.Generator().manual_seed(0))
    kids, t = shift_neighbors(xy, 0, 10, 7)
    assert kids.shape == (3, 5, 4, 2) and t.shape == (3, 5, 4, 2)
    k2, t2 = shift_neighbors(xy.reshape(-1, 2), 0, 10, 7)
    assert torch.equal(kids.reshape(-1, 4, 2), k2) and torch.equal(t.reshape(-1, 4, 2), t2)


# ---------------------------------------------------------------- device
@pytest.mark.cuda
def test_cuda_matches_cpu():
    dev = torch.device('cuda')
    s, j = split_index(torch.arange(4608), 2)
    a, b = get_neighbors(s, j, 2)
    ac, bc = get_neighbors(s.to(dev), j.to(dev), 2)
    assert ac.device.type == 'cuda' and torch.equal(ac.cpu(), a) and torch.equal(bc.cpu(), b)
    q, R = grid_pose(a, b, 3, F64)
    qc, Rc = grid_pose(ac, bc, 3, F64)
    assert torch.allclose(Rc.cpu(), R, atol=1e-12)
    t, p = pix2ang_nest(64, torch.arange(12 * 64**2, device=dev))
    t0, p0 = pix2ang_nest(64, torch.arange(12 * 64**2))
    assert torch.allclose(t.cpu(), t0) and torch.allclose(p.cpu(), p0)
