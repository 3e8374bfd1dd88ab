"""Tests for drgnai_nb.metrics: FSC, pose error (alignment, handedness, in/out-of-plane split, translation offset),
clustering agreement, and the projection-geometry convention the translation offset relies on."""
import math
import time

import numpy as np
import pytest
import torch

from drgnai_nb.io import DrgnaiInputError
from drgnai_nb.metrics import (FSCResult, PoseError, adjusted_rand_index, align_rotations, cluster_accuracy, fsc,
                               pose_error, project_to_so3, resolution, rotation_errors, spherical_mask, summary_table)

F = np.diag([1.0, 1.0, -1.0])


def rand_rot(n, seed):
    "Haar-random rotations (float64 numpy): drgnai_nb.so3 when present, else normalised Gaussian quaternions."
    try:
        from drgnai_nb.so3 import random_rotations
        return random_rotations(n, torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    except ImportError:
        q = np.random.default_rng(seed).normal(size=(n, 4)); q /= np.linalg.norm(q, axis=1, keepdims=True)
        w, x, y, z = q.T
        return np.stack([1 - 2*(y*y + z*z), 2*(x*y - w*z), 2*(x*z + w*y), 2*(x*y + w*z), 1 - 2*(x*x + z*z),
                         2*(y*z - w*x), 2*(x*z - w*y), 2*(y*z + w*x), 1 - 2*(x*x + y*y)], -1).reshape(n, 3, 3)


def axis_angle(axis, deg):
    "(N, 3) unit axes, angle in degrees -> (N, 3, 3) Rodrigues rotations."
    a = math.radians(deg)
    x, y, z = axis.T; o = np.zeros_like(x)
    K = np.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(-1, 3, 3)
    return np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * K @ K


def rz(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


# ---------------------------------------------------------------- FSC

def lowpass(v, cutoff_shell):
    D = v.shape[0]
    c = np.arange(D) - D // 2
    r = np.round(np.sqrt(c[:, None, None]**2 + c[None, :, None]**2 + c[None, None, :]**2))
    Fv = np.fft.fftshift(np.fft.fftn(v)) * (r <= cutoff_shell)
    return np.fft.ifftn(np.fft.ifftshift(Fv)).real


def test_fsc_self_and_noise():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(32, 32, 32)).astype(np.float32)
    r = fsc(v, v, Apix=1.7)
    assert isinstance(r, FSCResult) and r.fsc.shape == (17,) and r.freq[-1] == 0.5
    np.testing.assert_allclose(r.fsc, 1.0, atol=1e-6)
    res = r.resolution(0.143)
    assert res.px == 2.0 and res.angstrom == pytest.approx(3.4) and not res.crossed
    assert r.auc == pytest.approx(1.0)
    rn = fsc(v, rng.normal(size=(32, 32, 32)))
    assert np.abs(rn.fsc[2:]).mean() < 0.08 and np.abs(rn.fsc[3:]).max() < 0.35
    assert abs(rn.auc) < 0.1


def test_fsc_torch_numpy_and_mask():
    rng = np.random.default_rng(1)
    v1, v2 = rng.normal(size=(2, 24, 24, 24))
    v2 = v1 + 0.5 * v2
    a, b = fsc(v1, v2), fsc(torch.from_numpy(v1).float(), torch.from_numpy(v2).float())
    np.testing.assert_allclose(a.fsc, b.fsc, atol=1e-5)
    m = spherical_mask(24, 8, 3)
    assert m.shape == (24, 24, 24) and float(m.max()) == 1.0 and float(m.min()) == 0.0
    np.testing.assert_allclose(fsc(v1, v1, mask=m).fsc, 1.0, atol=1e-6)
    # masking is the same as multiplying first
    np.testing.assert_allclose(fsc(v1, v2, mask=m).fsc, fsc(v1 * m.numpy(), v2 * m.numpy()).fsc, atol=1e-6)
    with pytest.raises(DrgnaiInputError, match='mask'): fsc(v1, v2, mask=np.ones((24, 24, 23)))
    with pytest.raises(DrgnaiInputError, match='vol2'): fsc(v1, v2[:-1])
    with pytest.raises(DrgnaiInputError, match='vol1'): fsc(v1[0], v2[0])


@pytest.mark.parametrize('cut', [4, 8, 12])
def test_fsc_lowpass_crossing(cut):
    rng = np.random.default_rng(cut)
    D = 48
    v = rng.normal(size=(D, D, D))
    v2 = lowpass(v, cut) + 0.1 * v.std() * rng.normal(size=v.shape)
    r = fsc(v, v2, Apix=2.5)
    res = resolution(r, 0.5)
    assert res.crossed and abs(res.freq - (cut + 0.5) / D) < 1 / D
    assert res.px == pytest.approx(1 / res.freq) and res.angstrom == pytest.approx(2.5 / res.freq)
    assert r.fsc[:cut + 1].min() > 0.98 and np.abs(r.fsc[cut + 2:]).max() < 0.2
    assert r.auc == pytest.approx((cut + 0.5) / (D / 2), abs=0.05)
    df = r.to_frame()
    assert list(df.columns) == ['freq', 'freq_A', 'res_A', 'fsc'] and len(df) == D // 2 + 1


def test_resolution_interpolation_and_edges():
    fr = np.arange(5) / 8
    r = FSCResult(freq=fr, fsc=np.array([1.0, 0.9, 0.7, 0.3, 0.1]), D=8, Apix=2.0)
    res = r.resolution(0.5)
    assert res.freq == pytest.approx(2 / 8 + 0.5 / 8)  # halfway between shells 2 (0.7) and 3 (0.3)
    assert res.px == pytest.approx(8 / 2.5) and res.angstrom == pytest.approx(16 / 2.5)
    assert resolution(FSCResult(fr, np.array([0.1, 0, 0, 0, 0.]), 8), 0.5).px == math.inf
    r_nan = FSCResult(fr, np.array([np.nan, 0.9, np.nan, 0.3, 0.1]), 8)
    assert resolution(r_nan, 0.5).freq == pytest.approx(1 / 8 + (0.4 / 0.6) * 2 / 8)


# ---------------------------------------------------------------- pose error

def test_pose_error_exact_cases():
    Rt = rand_rot(800, 0)
    A = rand_rot(1, 1)[0]
    e = pose_error(Rt, Rt)
    assert isinstance(e, PoseError) and e.rot.max() < 1e-6 and not e.mirror and e.trans is None
    e = pose_error(Rt @ A.T, Rt)  # a globally rotated reconstruction
    assert e.rot.max() < 1e-6 and not e.mirror
    np.testing.assert_allclose(e.align, A, atol=1e-8)
    e = pose_error(F @ Rt @ A.T @ F, Rt)  # the mirror-image reconstruction
    assert e.rot.max() < 1e-6 and e.out_of_plane.max() < 1e-6 and e.in_plane.max() < 1e-6 and e.mirror
    assert e.hand_medians[0] > 30 and e.hand_medians[1] < 1e-6
    e = pose_error(torch.from_numpy(Rt @ A.T).float(), torch.from_numpy(Rt).float())  # torch float32 input
    assert e.rot.max() < 1e-3 and not e.mirror


def test_pose_error_known_rotation_noise_with_outliers():
    N = 5000
    rng = np.random.default_rng(3)
    Rt, A = rand_rot(N, 2), rand_rot(1, 4)[0]
    ax = rng.normal(size=(N, 3)); ax /= np.linalg.norm(ax, axis=1, keepdims=True)
    Rp = F @ (axis_angle(ax, 2.0) @ Rt @ A.T) @ F  # 2 degrees of noise, global rotation, opposite hand
    bad = rng.random(N) < 0.25
    Rp[bad] = rand_rot(int(bad.sum()), 5)
    e = pose_error(Rp, Rt)
    assert e.mirror
    assert abs(np.median(e.rot) - 2.0) < 0.1
    assert abs(np.median(e.rot[~bad]) - 2.0) < 0.02 and e.rot[~bad].max() < 2.1
    assert np.median(e.out_of_plane[~bad]) < 2.0 and np.median(e.in_plane[~bad]) < 2.0


def test_in_plane_out_of_plane_split():
    Rt = rand_rot(50, 6)
    ax = np.random.default_rng(7).normal(size=(50, 2)); ax /= np.linalg.norm(ax, axis=1, keepdims=True)
    swing = axis_angle(np.c_[ax, np.zeros(50)], 4.0)  # 4 degrees about an in-plane axis
    for Dl in (rz(7) @ swing, swing @ rz(-7)):
        tot, oop, inp = rotation_errors(Dl @ Rt, Rt)
        np.testing.assert_allclose(oop, 4.0, atol=1e-9); np.testing.assert_allclose(inp, 7.0, atol=1e-9)
        assert (tot > 7).all() and (tot < 11).all()
    tot, oop, inp = rotation_errors(rz(179) @ Rt, Rt)
    np.testing.assert_allclose(inp, 179.0, atol=1e-9); np.testing.assert_allclose(oop, 0.0, atol=1e-9)
    # pure in-plane error: a rotation about the viewing direction, row 2 of Rt
    tot, oop, inp = rotation_errors(Rt @ axis_angle(Rt[:, 2, :], 10.0), Rt)
    np.testing.assert_allclose(inp, 10.0, atol=1e-9); np.testing.assert_allclose(oop, 0.0, atol=1e-9)


def test_translation_noise_and_global_shift():
    N, D, sigma = 4000, 128, 2.0
    rng = np.random.default_rng(8)
    Rt = rand_rot(N, 9)
    s0 = np.array([-5.0, 2.5, 7.0])
    tt = rng.normal(size=(N, 2)) * 8
    noise = rng.normal(size=(N, 2)) * sigma
    tp = tt + Rt[:, :2, :] @ s0 + noise
    e = pose_error(Rt, Rt, tp / D, tt / D, D=D)  # fractions of the box, as in pose pickles
    np.testing.assert_allclose(e.shift, s0, atol=0.1)
    assert np.sqrt(np.mean(e.trans**2)) == pytest.approx(sigma * math.sqrt(2), rel=0.03)
    assert np.median(e.trans) == pytest.approx(sigma * math.sqrt(2 * math.log(2)), rel=0.05)
    np.testing.assert_allclose(e.trans_raw, np.linalg.norm(tp - tt, axis=1))
    # pixels in, no noise: the offset is removed exactly
    e = pose_error(Rt, Rt, tt + Rt[:, :2, :] @ s0, tt)
    assert e.trans.max() < 1e-9 and e.trans_raw.mean() > 3
    np.testing.assert_allclose(e.shift, s0, atol=1e-9)
    # same for the mirrored, rotated reconstruction: the shift is still expressed through rot_true
    A = rand_rot(1, 10)[0]
    e = pose_error(F @ Rt @ A.T @ F, Rt, tt + Rt[:, :2, :] @ s0, tt)
    assert e.mirror and e.trans.max() < 1e-9


def test_pose_error_bad_input():
    Rt = rand_rot(10, 11)
    with pytest.raises(DrgnaiInputError, match='rot_pred'): pose_error(Rt[:9], Rt)
    with pytest.raises(DrgnaiInputError, match='rot_true'): pose_error(Rt, Rt[:, :2])
    with pytest.raises(DrgnaiInputError, match='trans_pred'): pose_error(Rt, Rt, np.zeros((10, 3)), np.zeros((10, 2)))
    with pytest.raises(DrgnaiInputError, match='neither'): pose_error(Rt, Rt, np.zeros((10, 2)))
    bad = Rt.copy(); bad[3, 0, 0] = np.nan
    with pytest.raises(DrgnaiInputError, match='rot_pred'): pose_error(bad, Rt)


def test_pose_error_is_fast_for_large_n():
    N = 100_000
    Rt = rand_rot(N, 12)
    Rp = Rt @ rand_rot(1, 13)[0]
    t = time.perf_counter()
    e = pose_error(Rp, Rt, np.zeros((N, 2)), np.zeros((N, 2)), D=64)
    assert time.perf_counter() - t < 10 and e.rot.max() < 1e-6


def test_align_rotations_and_projection():
    M = rand_rot(1, 14)[0] * 3 + 0.01
    R = project_to_so3(M)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12); assert np.linalg.det(R) == pytest.approx(1)
    Rt = rand_rot(100, 15); A = rand_rot(1, 16)[0]
    np.testing.assert_allclose(align_rotations(Rt @ A.T, Rt), A, atol=1e-10)


def test_summary_table():
    Rt = rand_rot(200, 17)
    tt = np.random.default_rng(18).normal(size=(200, 2))
    e1 = pose_error(Rt, Rt, tt, tt)
    e2 = pose_error(axis_angle(np.tile([[0, 0, 1.0]], (200, 1)), 3.0) @ Rt, Rt, tt + 1.0, tt)
    tab = summary_table({'a': e1, 'b': e2}, resolution={'a': 2.0,
                                                       'b': FSCResult(np.arange(5) / 8, np.array([1, 1, .6, .4, 0.]), 8)})
    assert list(tab.columns[:4]) == ['out-of-plane (deg)', 'in-plane (deg)', 'translation (px)', 'resolution (px)']
    assert tab.loc['a', 'resolution (px)'] == 2.0 and tab.loc['b', 'resolution (px)'] == pytest.approx(8 / 2.5)
    assert tab.loc['b', 'in-plane (deg)'] == pytest.approx(3.0, abs=0.1)  # the alignment absorbs a little
    assert tab.loc['b', 'out-of-plane (deg)'] < 0.3  # finite-sample alignment error, ~3°/sqrt(N)
    assert summary_table(e1, stat='mean').index.tolist() == ['model']
    with pytest.raises(DrgnaiInputError): summary_table(e1, stat='mode')
    assert 'mirror=False' in repr(e1) and 'out_of_plane' in repr(e1)


# ---------------------------------------------------------------- clustering

def test_ari_and_cluster_accuracy():
    rng = np.random.default_rng(19)
    y = rng.integers(0, 4, 500)
    perm = np.array([2, 3, 0, 1])
    assert adjusted_rand_index(y, perm[y]) == pytest.approx(1.0)
    assert cluster_accuracy(y, perm[y]) == 1.0
    assert abs(adjusted_rand_index(y, rng.integers(0, 4, 500))) < 0.05
    yp = perm[y].copy(); flip = rng.random(500) < 0.04; yp[flip] = (yp[flip] + 1) % 4
    acc, mapping = cluster_accuracy(torch.from_numpy(y), yp, return_mapping=True)
    assert acc == pytest.approx(1 - flip.mean()) and mapping == {int(perm[k]): k for k in range(4)}
    assert cluster_accuracy([0, 0, 1, 1], ['x', 'x', 'x', 'y']) == 0.75
    assert cluster_accuracy([0, 0, 0], [0, 1, 2]) == pytest.approx(1 / 3)  # more clusters than classes
    with pytest.raises(DrgnaiInputError, match='labels_pred'): adjusted_rand_index([0, 1], [0])


# ---------------------------------------------------------------- the projection geometry behind the offset fit

def gaussian_blob(D, center_xyz, width=1.5):
    c = np.arange(D) - D // 2
    z, y, x = np.meshgrid(c, c, c, indexing='ij')
    return np.exp(-((x - center_xyz[0])**2 + (y - center_xyz[1])**2 + (z - center_xyz[2])**2) / (2 * width**2))


def test_projection_moves_points_by_R_x():
    "A volume point x (pixels from the centre, (x, y, z)) lands at image point (R x)[:2] in drgnai_nb.forward.project."
    forward = pytest.importorskip('drgnai_nb.forward')
    D = 32
    p = np.array([5.0, -3.0, 2.0])
    vol = torch.from_numpy(gaussian_blob(D, p)).float()
    R = rand_rot(6, 20)
    img = forward.project(vol, torch.from_numpy(R).float()).double().numpy()  # (B, D, D)
    c = np.arange(D) - D // 2
    X, Y = np.meshgrid(c, c)
    peak = np.array([np.unravel_index(np.argmax(im), im.shape) for im in img])  # (B, 2) row, column
    # centroid within 5 px of the brightest pixel (the Fourier projection leaves a faint background far away)
    w = img * ((X - c[peak[:, 1], None, None])**2 + (Y - c[peak[:, 0], None, None])**2 < 25)
    cx, cy = (w * X).sum((1, 2)) / w.sum((1, 2)), (w * Y).sum((1, 2)) / w.sum((1, 2))
    np.testing.assert_allclose(np.c_[cx, cy], (R @ p)[:, :2], atol=0.05)


def test_mirror_volume_matches_F_R_F():
    "The mirror-image volume (z -> -z) projected with F R F gives the images of the original with R."
    forward = pytest.importorskip('drgnai_nb.forward')
    D = 32
    vol = sum(gaussian_blob(D, p, 1.5) * w for p, w in (([4, 0, 3], 1.0), ([-3, 5, -2], 0.7), ([0, -4, 5], 0.5)))
    mirror = np.roll(vol[::-1], 1, axis=0)  # z index i -> coordinate -(i - D//2)
    R = rand_rot(4, 21)
    a = forward.project(torch.from_numpy(vol).float(), torch.from_numpy(R).float())
    b = forward.project(torch.from_numpy(mirror.copy()).float(), torch.from_numpy(F @ R @ F).float())
    c = forward.project(torch.from_numpy(mirror.copy()).float(), torch.from_numpy(R).float())
    err_b = (a - b).norm() / a.norm()
    err_c = (a - c).norm() / a.norm()
    assert err_b < 0.02 and err_c > 0.2
