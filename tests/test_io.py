"""drgnai_nb.io: cryoDRGN/RELION/cryoSPARC goldens, round trips, the safe unpickler and the bad-input catalogue."""
import os
import pickle
import warnings

import mrcfile
import numpy as np
import pytest
import torch

from drgnai_nb.io import (
    DrgnaiInputError, MRCStack, read_mrc, write_mrc, mrc_header, read_star, StarFile, star_to_poses, star_to_ctf,
    read_cs, cs_to_poses, cs_to_ctf, write_cs, particle_locations, particle_location_arrays, read_particles,
    read_txt_stacks, load_pkl, save_pkl, load_poses, save_poses, load_ctf, save_ctf, load_ind, save_ind, write_star,
)
from drgnai_nb.so3 import euler_relion_to_R, random_rotations

PFCRT = 'FinalRefinement-OriginalParticles-PfCRT.star'


# ---------------------------------------------------------------- helpers
def _raw_mrc(path, data, voxel=1.0):
    "Write with mrcfile directly (no checks), e.g. to build bad inputs."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(np.asarray(data, np.float32))
            m.voxel_size = voxel
    return path


def _stack(path, n=5, D=8, seed=0, Apix=1.0):
    imgs = np.random.default_rng(seed).standard_normal((n, D, D)).astype(np.float32)
    write_mrc(path, imgs, Apix=Apix, is_stack=True)
    return imgs


def _star31(path, names, extra_particle_cols=None, optics_rows=None, drop=()):
    "A small RELION 3.1 star written by hand."
    optics_rows = optics_rows or [(1, 2.0, 8, 300.0, 2.7, 0.1)]
    cols = {'rlnImageName': names, 'rlnDefocusU': [15000.0 + i for i in range(len(names))],
            'rlnDefocusV': [14000.0] * len(names), 'rlnDefocusAngle': [30.0] * len(names),
            'rlnAngleRot': [10.0] * len(names), 'rlnAngleTilt': [20.0] * len(names), 'rlnAnglePsi': [30.0] * len(names),
            'rlnOriginXAngst': [1.0] * len(names), 'rlnOriginYAngst': [-2.0] * len(names),
            'rlnOpticsGroup': [1] * len(names)}
    cols.update(extra_particle_cols or {})
    for d in drop: cols.pop(d)
    lines = ['# version 30001', '', 'data_optics', '', 'loop_']
    ocols = ['rlnOpticsGroup', 'rlnImagePixelSize', 'rlnImageSize', 'rlnVoltage', 'rlnSphericalAberration', 'rlnAmplitudeContrast']
    lines += [f'_{c} #{i + 1}' for i, c in enumerate(ocols)]
    lines += [' '.join(str(v) for v in r) for r in optics_rows]
    lines += ['', '# version 30001', '', 'data_particles', '', 'loop_']
    lines += [f'_{c} #{i + 1}' for i, c in enumerate(cols)]
    lines += [' '.join(str(cols[c][i]) for c in cols) for i in range(len(names))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(lines) + '\n')
    return path


def _raises(fn, *needles):
    "Call fn, expect DrgnaiInputError whose message contains every needle; return the message."
    with pytest.raises(DrgnaiInputError) as ei:
        fn()
    msg = str(ei.value)
    for n in needles:
        assert str(n) in msg, f'{n!r} not in message: {msg}'
    return msg


# ---------------------------------------------------------------- RELION goldens
def test_pfcrt_poses_golden(cryodrgn_data):
    rot, trans = star_to_poses(cryodrgn_data / PFCRT, D=300, Apix=1.035)
    ref_rot, ref_trans = load_pkl(cryodrgn_data / 'pose.star.pkl')
    assert rot.shape == (5, 3, 3) and trans.shape == (5, 2)
    assert np.linalg.norm(rot - ref_rot) < 1e-4
    assert np.linalg.norm(trans - ref_trans) < 1e-4


def test_pfcrt_ctf_golden(cryodrgn_data):
    ctf = star_to_ctf(cryodrgn_data / PFCRT, D=300, Apix=1.035)  # no _rlnAmplitudeContrast: w defaults to 0.1
    ref = load_pkl(cryodrgn_data / 'ctf1.pkl')
    assert ctf.dtype == np.float32 and ref.dtype == np.float32 and ctf.shape == (5, 9)
    assert np.linalg.norm(ctf - ref) < 1e-4
    np.testing.assert_allclose(ctf[0], [300, 1.035, 15686, 17521.4, 87.62907, 300, 0.001, 0.1, 0], rtol=1e-6)
    # RELION 3.0: the pixel size also follows from _rlnDetectorPixelSize * 1e4 / _rlnMagnification
    s = read_star(cryodrgn_data / PFCRT)
    assert s.optics is None and s.block == 'images' and len(s) == 5
    np.testing.assert_allclose(s.Apix, 1.035)
    assert np.linalg.norm(star_to_ctf(s, D=300) - ref) < 1e-4


def test_pfcrt_needs_box(cryodrgn_data):
    _raises(lambda: star_to_poses(cryodrgn_data / PFCRT), 'box', 'D=', PFCRT)


def test_relion31_optics_and_images(cryodrgn_data):
    star = cryodrgn_data / 'relion31.star'
    s = read_star(star)
    assert s.relion31 and len(s) == 5
    np.testing.assert_allclose(s.Apix, 2.806)
    assert (s.box == 256).all()
    assert abs(mrc_header(cryodrgn_data / 'relion31.mrcs').Apix - 1.0) < 1e-6  # the header is wrong; optics wins
    locs = particle_locations(star)
    assert [i for _, i in locs] == [0, 1, 2, 3, 4]
    assert all(os.path.samefile(p, cryodrgn_data / 'relion31.mrcs') for p, _ in locs)
    imgs = read_particles(star)
    direct, info = read_mrc(cryodrgn_data / 'relion31.mrcs')
    assert imgs.shape == (5, 256, 256) and imgs.dtype == np.float32
    assert np.array_equal(imgs, direct)
    assert np.array_equal(read_particles(star, [3, 1]), direct[[3, 1]])
    ctf = star_to_ctf(s)
    np.testing.assert_allclose(ctf[:, [0, 1, 5, 6, 7, 8]], np.tile([256, 2.806, 300, 0.01, 0.1, 0], (5, 1)), rtol=1e-6)
    np.testing.assert_allclose(ctf[0, 2:5], [13108.082418, 12845.582418, -160.39], rtol=1e-6)


def test_relion31_poses_and_overrides(cryodrgn_data):
    s = read_star(cryodrgn_data / 'relion31.star')
    rot, trans = star_to_poses(s)
    ox, oy = s.column('rlnOriginXAngst'), s.column('rlnOriginYAngst')
    np.testing.assert_allclose(trans, np.stack([ox, oy], -1) / 2.806 / 256, rtol=1e-12)
    ref_rot = euler_relion_to_R(torch.tensor(np.stack([s.column('rlnAngleRot'), s.column('rlnAngleTilt'),
                                                       s.column('rlnAnglePsi')], -1))).numpy()
    np.testing.assert_allclose(rot, ref_rot, atol=1e-12)
    # overriding Apix scales by Apix_file / Apix_given; overriding D scales by D_file / D_given
    np.testing.assert_allclose(star_to_poses(s, Apix=1.403)[1], trans * 2.0, rtol=1e-12)
    np.testing.assert_allclose(star_to_poses(s, D=128)[1], trans * 2.0, rtol=1e-12)
    ctf = star_to_ctf(s, D=128, Apix=5.612, kv=200, cs=2.7, w=0.07, ps=10)
    np.testing.assert_allclose(ctf[0, [0, 1, 5, 6, 7, 8]], [128, 5.612, 200, 2.7, 0.07, 10], rtol=1e-6)


def test_relion5_parses(cryodrgn_data):
    s = read_star(cryodrgn_data / 'relion5.star')
    assert len(s) == 17 and s.relion31 and len(s.optics) == 1
    np.testing.assert_allclose(s.Apix, 0.89)
    assert (s.box == 448).all()
    ctf = star_to_ctf(s)
    assert ctf.shape == (17, 9)
    np.testing.assert_allclose(ctf[:, [0, 1, 5, 6, 7]], np.tile([448, 0.89, 100, 1.6, 0.1], (17, 1)), rtol=1e-6)
    rot, trans = star_to_poses(s)
    assert rot.shape == (17, 3, 3) and np.abs(trans).max() < 0.05
    # its images are not shipped: the error names the stack and the first row using it
    _raises(lambda: particle_locations(cryodrgn_data / 'relion5.star'), 'toy_images_a.mrcs', 'row 0', 'relion5.star')


def test_euler_golden():
    R = euler_relion_to_R(torch.tensor([-147.9485, 22.58999, 162.539], dtype=torch.float64)).numpy()
    ref = np.array([[0.90571941, 0.21306972, 0.36643367],
                    [-0.27142096, 0.95553406, 0.11526193],
                    [-0.32558103, -0.20385275, 0.92327734]])
    np.testing.assert_allclose(R, ref, atol=1e-6)


def test_golden_pickles_load_safely(cryodrgn_data):
    assert load_ctf(cryodrgn_data / 'ctf1.pkl', N=5).shape == (5, 9)
    rot, trans = load_poses(cryodrgn_data / 'pose.star.pkl', N=5, D=300)
    assert rot.dtype == np.float32 and trans.shape == (5, 2)
    rot, trans = load_poses(cryodrgn_data / 'hand_rot.pkl', N=100)  # bare rot
    assert rot.shape == (100, 3, 3) and trans is None


def test_hand_stack_reads_like_mrcfile(cryodrgn_data):
    st = MRCStack(cryodrgn_data / 'hand.mrcs')
    assert len(st) == 100 and st.D == 64
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with mrcfile.open(cryodrgn_data / 'hand.mrcs', permissive=True) as m:
            ref = np.array(m.data)
    idx = [43, 12, 53, 64, 31, 56, 75, 63, 27, 62, 96, 12]
    assert np.array_equal(st.images(idx), ref[idx])


# ---------------------------------------------------------------- star: optics groups, write-back
def test_multiple_optics_groups(tmp_path):
    names = ['000001@a.mrcs', '000002@a.mrcs', '000003@a.mrcs']
    star = _star31(tmp_path / 'g.star', names, {'rlnOpticsGroup': [2, 1, 2]},
                   optics_rows=[(1, 1.0, 64, 300.0, 2.7, 0.1), (2, 2.0, 32, 200.0, 0.01, 0.07)])
    s = read_star(star)
    np.testing.assert_allclose(s.Apix, [2.0, 1.0, 2.0])
    np.testing.assert_array_equal(s.box, [32, 64, 32])
    ctf = star_to_ctf(s)
    np.testing.assert_allclose(ctf[:, [0, 1, 5, 6, 7]], [[32, 2, 200, 0.01, 0.07], [64, 1, 300, 2.7, 0.1],
                                                         [32, 2, 200, 0.01, 0.07]], rtol=1e-6)
    _, trans = star_to_poses(s)
    np.testing.assert_allclose(trans[:, 0], [1 / 2 / 32, 1 / 1 / 64, 1 / 2 / 32], rtol=1e-12)


def test_unknown_optics_group(tmp_path):
    star = _star31(tmp_path / 'g.star', ['1@a.mrcs', '2@a.mrcs'], {'rlnOpticsGroup': [1, 3]})
    _raises(lambda: read_star(star), 'row 1', '_rlnOpticsGroup', '3', 'g.star')


def test_write_star_roundtrip(tmp_path):
    N, D = 6, 8
    imgs = _stack(tmp_path / 'data' / 'st.mrcs', n=N, D=D)
    rot = random_rotations(N, generator=torch.Generator().manual_seed(1)).double().numpy()
    trans = np.random.default_rng(2).uniform(-0.2, 0.2, (N, 2))
    ctf = np.tile(np.array([D, 2.5, 15000, 14000, 30, 300, 2.7, 0.1, 0], np.float32), (N, 1))
    ctf[:, 2] += np.arange(N) * 123.4
    ctf[:, 4] = np.linspace(-170, 170, N)
    ctf[3:, 7] = 0.07  # a second optics group
    locs = [(str(tmp_path / 'data' / 'st.mrcs'), i) for i in range(N)]
    out = write_star(tmp_path / 'out' / 'p.star', locs, ctf, rot, trans)
    s = read_star(out)
    assert s.relion31 and len(s.optics) == 2 and list(s.particles['rlnOpticsGroup']) == [1, 1, 1, 2, 2, 2]
    assert s.particles['rlnImageName'][0] == '000001@../data/st.mrcs'
    r2, t2 = star_to_poses(s)
    assert np.abs(r2 - rot).max() < 1e-4 and np.abs(t2 - trans).max() < 1e-4
    np.testing.assert_allclose(star_to_ctf(s), ctf, rtol=1e-6, atol=1e-4)
    assert np.array_equal(read_particles(out), imgs)
    assert [p.name for p in (tmp_path / 'out').iterdir()] == ['p.star']  # no temporary left


def test_write_star_roundtrip_pfcrt(cryodrgn_data, tmp_path):
    rot, trans = load_pkl(cryodrgn_data / 'pose.star.pkl')
    ctf = load_pkl(cryodrgn_data / 'ctf1.pkl')
    names = [f'{i + 1:06d}@stack.mrcs' for i in range(5)]
    write_star(tmp_path / 'p.star', names, ctf, rot, trans)
    r2, t2 = star_to_poses(tmp_path / 'p.star')
    assert np.linalg.norm(r2 - rot) < 1e-4 and np.linalg.norm(t2 - trans) < 1e-4
    assert np.linalg.norm(star_to_ctf(tmp_path / 'p.star') - ctf) < 1e-4


# ---------------------------------------------------------------- cryoSPARC
def _rotvec_to_R(v):
    "Independent Rodrigues formula (rotation of column vectors by |v| about v/|v|)."
    th = np.linalg.norm(v, axis=-1)[:, None, None]
    k = v / np.linalg.norm(v, axis=-1, keepdims=True)
    K = np.zeros((len(v), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    K = K - K.transpose(0, 2, 1)
    return np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * K @ K


def _make_cs(tmp_path, N=6, D=16):
    rng = np.random.default_rng(3)
    _stack(tmp_path / 'J1' / 'imported' / 'a.mrcs', n=4, D=D, seed=4)
    _stack(tmp_path / 'J1' / 'imported' / 'b.mrcs', n=3, D=D, seed=5)
    dt = [('uid', '<u8'), ('blob/path', 'S40'), ('blob/idx', '<u4'), ('blob/shape', '<u4', (2,)),
          ('blob/psize_A', '<f4'), ('ctf/accel_kv', '<f4'), ('ctf/cs_mm', '<f4'), ('ctf/amp_contrast', '<f4'),
          ('ctf/df1_A', '<f4'), ('ctf/df2_A', '<f4'), ('ctf/df_angle_rad', '<f4'), ('ctf/phase_shift_rad', '<f4'),
          ('alignments3D/pose', '<f4', (3,)), ('alignments3D/shift', '<f4', (2,))]
    a = np.zeros(N, dt)
    a['uid'] = np.arange(N) + 1000
    a['blob/path'] = [b'>J1/imported/a.mrcs'] * 3 + [b'>J1/imported/b.mrcs'] * 3
    a['blob/idx'] = [3, 0, 1, 2, 0, 1]
    a['blob/shape'] = D
    a['blob/psize_A'] = 1.7
    a['ctf/accel_kv'], a['ctf/cs_mm'], a['ctf/amp_contrast'] = 300, 2.7, 0.07
    a['ctf/df1_A'] = rng.uniform(1e4, 2e4, N)
    a['ctf/df2_A'] = a['ctf/df1_A'] - 300
    a['ctf/df_angle_rad'] = rng.uniform(-np.pi, np.pi, N)
    a['ctf/phase_shift_rad'] = 0.25
    a['alignments3D/pose'] = rng.normal(size=(N, 3))
    a['alignments3D/shift'] = rng.uniform(-3, 3, (N, 2))
    path = tmp_path / 'J2' / 'particles.cs'
    path.parent.mkdir()
    with open(path, 'wb') as fh:
        np.save(fh, a)
    return path, a


def test_cs_poses_ctf_paths(tmp_path):
    path, a = _make_cs(tmp_path)
    cs = read_cs(path)
    assert cs.dtype == a.dtype and len(cs) == 6
    rot, trans = cs_to_poses(cs)
    ref = _rotvec_to_R(a['alignments3D/pose'].astype(np.float64)).transpose(0, 2, 1)
    np.testing.assert_allclose(rot, ref, atol=1e-10)
    np.testing.assert_allclose(trans, a['alignments3D/shift'] / 16, rtol=1e-7)
    ctf = cs_to_ctf(path)
    np.testing.assert_allclose(ctf[:, 0], 16)
    np.testing.assert_allclose(ctf[:, 1], 1.7, rtol=1e-6)
    np.testing.assert_allclose(ctf[:, 2], a['ctf/df1_A'], rtol=1e-6)
    np.testing.assert_allclose(ctf[:, 4], np.degrees(a['ctf/df_angle_rad']), rtol=1e-5)
    np.testing.assert_allclose(ctf[:, 5:8], np.tile([300, 2.7, 0.07], (6, 1)), rtol=1e-6)
    np.testing.assert_allclose(ctf[:, 8], np.degrees(0.25), rtol=1e-6)
    np.testing.assert_allclose(cs_to_ctf(a, D=8, Apix=3.4)[:, :2], np.tile([8, 3.4], (6, 1)), rtol=1e-6)
    locs = particle_locations(path, datadir=tmp_path)
    assert [(os.path.basename(p), i) for p, i in locs] == [('a.mrcs', 3), ('a.mrcs', 0), ('a.mrcs', 1),
                                                          ('b.mrcs', 2), ('b.mrcs', 0), ('b.mrcs', 1)]
    a_imgs = read_mrc(tmp_path / 'J1' / 'imported' / 'a.mrcs')[0]
    b_imgs = read_mrc(tmp_path / 'J1' / 'imported' / 'b.mrcs')[0]
    got = read_particles(path, [3, 0], datadir=tmp_path)
    assert np.array_equal(got, np.stack([b_imgs[2], a_imgs[3]]))
    # without datadir the stacks are not beside the .cs: the error says where it looked
    _raises(lambda: particle_locations(path), 'J1/imported/a.mrcs', 'row 0', 'datadir')


def test_write_cs_subset(tmp_path):
    path, a = _make_cs(tmp_path)
    out = write_cs(tmp_path / 'sub.cs', path, [5, 1, 2])
    b = read_cs(out)
    assert b.dtype == a.dtype and np.array_equal(b, a[[5, 1, 2]])
    assert out.suffix == '.cs' and sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ['sub.cs']
    _raises(lambda: write_cs(tmp_path / 'bad.cs', a, [0, 6]), 'index 6', 'out of range')


def test_cs_missing_field(tmp_path):
    path, a = _make_cs(tmp_path)
    from numpy.lib import recfunctions as rfn
    b = rfn.drop_fields(a, 'alignments3D/pose', usemask=False)
    np.save(open(tmp_path / 'nopose.cs', 'wb'), b)
    _raises(lambda: cs_to_poses(tmp_path / 'nopose.cs'), 'alignments3D/pose', 'nopose.cs')


# ---------------------------------------------------------------- MRC
def test_write_mrc_order_voxel_atomic(tmp_path):
    vol = np.zeros((6, 8, 10), np.float32)  # (z, y, x)
    vol[1, 2, 3] = 7
    p = write_mrc(tmp_path / 'v.mrc', vol, Apix=1.25, is_stack=False)
    with mrcfile.open(p) as m:
        assert (int(m.header.nx), int(m.header.ny), int(m.header.nz)) == (10, 8, 6)
        assert m.data[1, 2, 3] == 7 and m.data.dtype == np.float32
        np.testing.assert_allclose(m.voxel_size.x, 1.25, rtol=1e-6)
        assert m.is_volume()
    arr, info = read_mrc(p, check_box=False)
    assert arr.shape == (6, 8, 10) and info.is_volume and abs(info.Apix - 1.25) < 1e-6
    cube = np.random.default_rng(0).standard_normal((8, 8, 8)).astype(np.float64)
    write_mrc(tmp_path / 'c.mrc', cube, Apix=2.0)
    arr, info = read_mrc(tmp_path / 'c.mrc')
    assert arr.dtype == np.float32 and info.is_volume and np.allclose(arr, cube, atol=1e-6)
    # a failed write leaves the existing file as it was and no temporary behind
    bad = cube.copy(); bad[0, 0, 0] = np.inf
    _raises(lambda: write_mrc(tmp_path / 'c.mrc', bad), 'NaN or Inf', 'c.mrc')
    assert np.allclose(read_mrc(tmp_path / 'c.mrc')[0], cube, atol=1e-6)
    assert sorted(x.name for x in tmp_path.iterdir()) == ['c.mrc', 'v.mrc']


def test_mrcstack_lazy_any_order(tmp_path):
    imgs = _stack(tmp_path / 's.mrcs', n=7, D=12, Apix=3.0)
    st, info = read_mrc(tmp_path / 's.mrcs', lazy=True)
    assert isinstance(st, MRCStack) and len(st) == 7 and st.D == 12 and abs(st.Apix - 3.0) < 1e-6
    order = [6, 0, 3, 3, 1]
    assert np.array_equal(st.images(order), imgs[order])
    assert np.array_equal(st.images(np.arange(2, 5)), imgs[2:5])
    assert np.array_equal(st[4], imgs[4]) and np.array_equal(st[1:6:2], imgs[1:6:2])
    assert st.images([]).shape == (0, 12, 12)
    st2 = pickle.loads(pickle.dumps(st))
    assert np.array_equal(st2.images([5]), imgs[[5]])
    with MRCStack(tmp_path / 's.mrcs', keep_open=True) as ko:
        assert np.array_equal(ko.images([2, 0]), imgs[[2, 0]]) and np.array_equal(ko.images([1]), imgs[[1]])
    _raises(lambda: st.images([7]), 'index 7', 's.mrcs', '7 images')
    single = write_mrc(tmp_path / 'one.mrc', imgs[0])
    arr, info = read_mrc(single)
    assert arr.shape == (1, 12, 12) and np.array_equal(arr[0], imgs[0])


def test_txt_stack_list(tmp_path):
    a = _stack(tmp_path / 'a.mrcs', n=3)
    b = _stack(tmp_path / 'sub' / 'b.mrcs', n=2, seed=1)
    (tmp_path / 'list.txt').write_text('a.mrcs\n\nsub/b.mrcs\n')
    assert read_txt_stacks(tmp_path / 'list.txt') == [str(tmp_path / 'a.mrcs'), str(tmp_path / 'sub' / 'b.mrcs')]
    locs = particle_locations(tmp_path / 'list.txt')
    assert [i for _, i in locs] == [0, 1, 2, 0, 1] and locs[3][0].endswith('b.mrcs')
    assert np.array_equal(read_particles(tmp_path / 'list.txt'), np.concatenate([a, b]))
    stacks, sid, idx = particle_location_arrays(tmp_path / 'a.mrcs')
    assert len(stacks) == 1 and sid.tolist() == [0, 0, 0] and idx.tolist() == [0, 1, 2]
    (tmp_path / 'bad.txt').write_text('a.mrcs\nmissing.mrcs\n')
    _raises(lambda: read_txt_stacks(tmp_path / 'bad.txt'), 'line 2', 'missing.mrcs', 'bad.txt')


def test_star_datadir_and_relative(tmp_path):
    imgs = _stack(tmp_path / 'stacks' / 'p.mrcs', n=4)
    star = _star31(tmp_path / 'meta' / 'x.star', [f'{i}@Extract/job1/p.mrcs' for i in (4, 1)])
    locs = particle_locations(star, datadir=tmp_path / 'stacks')  # matched by file name inside datadir
    assert [i for _, i in locs] == [3, 0]
    assert np.array_equal(read_particles(star, datadir=tmp_path / 'stacks'), imgs[[3, 0]])


# ---------------------------------------------------------------- safe pickles
class _Evil:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


def test_safe_unpickler_rejects_code(tmp_path):
    marker = tmp_path / 'pwned'
    (tmp_path / 'evil.pkl').write_bytes(pickle.dumps(_Evil(marker)))
    _raises(lambda: load_pkl(tmp_path / 'evil.pkl'), 'system', 'evil.pkl')
    assert not marker.exists()
    (tmp_path / 'evil2.pkl').write_bytes(pickle.dumps((np.zeros(3), _Evil(marker))))
    _raises(lambda: load_poses(tmp_path / 'evil2.pkl'), 'forbidden')
    assert not marker.exists()
    (tmp_path / 'eval.pkl').write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    _raises(lambda: load_pkl(tmp_path / 'eval.pkl'), 'eval')


def test_safe_unpickler_accepts_numpy_and_containers(tmp_path):
    obj = {'a': np.arange(4, dtype=np.int64), 'b': (np.float32(2.5), np.float64(1), 3, 2.0, 'x', b'y', None, True),
           'c': [np.zeros((2, 3), np.float32)], 'd': {1, 2}, 'e': 1 + 2j,
           'f': np.zeros(2, dtype=[('x', '<f4'), ('p', 'S4')])}
    for proto in (2, 3, 4, 5):
        (tmp_path / 'o.pkl').write_bytes(pickle.dumps(obj, protocol=proto))
        got = load_pkl(tmp_path / 'o.pkl')
        assert np.array_equal(got['a'], obj['a']) and got['b'] == obj['b'] and got['d'] == {1, 2}
        assert got['f'].dtype == obj['f'].dtype
    save_pkl(tmp_path / 's.pkl', obj)
    assert np.array_equal(load_pkl(tmp_path / 's.pkl')['c'][0], obj['c'][0])


def test_index_pickles(tmp_path):
    save_ind(tmp_path / 'i.pkl', [4, 0, 2])
    ind = load_ind(tmp_path / 'i.pkl', N=5)
    assert ind.dtype == np.int64 and ind.tolist() == [4, 0, 2]
    _raises(lambda: load_ind(tmp_path / 'i.pkl', N=4), 'index 4', 'i.pkl')
    save_pkl(tmp_path / 'f.pkl', np.array([0.5, 1.0]))
    _raises(lambda: load_ind(tmp_path / 'f.pkl'), 'integers', 'f.pkl')


def test_pose_ctf_pickle_roundtrip(tmp_path):
    rot = random_rotations(4, generator=torch.Generator().manual_seed(0)).numpy()
    trans = np.full((4, 2), 0.05)
    save_poses(tmp_path / 'p.pkl', rot, trans)
    r, t = load_poses(tmp_path / 'p.pkl', N=4)
    assert np.allclose(r, rot) and np.allclose(t, trans)
    save_poses(tmp_path / 'r.pkl', rot)
    assert isinstance(load_pkl(tmp_path / 'r.pkl'), np.ndarray) and load_poses(tmp_path / 'r.pkl')[1] is None
    ctf = np.tile(np.array([64, 1.5, 1e4, 1e4, 0, 300, 2.7, 0.1, 0]), (4, 1))
    save_ctf(tmp_path / 'c.pkl', ctf)
    assert load_pkl(tmp_path / 'c.pkl').dtype == np.float32 and np.allclose(load_ctf(tmp_path / 'c.pkl', N=4), ctf)


# ---------------------------------------------------------------- bad-input catalogue
def test_bad_odd_box(tmp_path):
    _raw_mrc(tmp_path / 'odd.mrcs', np.zeros((3, 7, 7)))
    _raises(lambda: MRCStack(tmp_path / 'odd.mrcs'), 'odd.mrcs', 'box 7 is odd', 'even')
    _raises(lambda: particle_locations(tmp_path / 'odd.mrcs'), 'odd.mrcs', 'odd')


def test_bad_non_square_box(tmp_path):
    _raw_mrc(tmp_path / 'rect.mrcs', np.zeros((3, 8, 6)))
    _raises(lambda: read_mrc(tmp_path / 'rect.mrcs'), 'rect.mrcs', '8x6', 'square')


def test_bad_truncated_mrc(tmp_path):
    _raw_mrc(tmp_path / 't.mrcs', np.ones((4, 8, 8)))
    full = (tmp_path / 't.mrcs').read_bytes()
    (tmp_path / 't.mrcs').write_bytes(full[:1024 + 2 * 8 * 8 * 4 + 10])
    _raises(lambda: MRCStack(tmp_path / 't.mrcs'), 't.mrcs', 'truncated', '2 complete images')
    (tmp_path / 'h.mrcs').write_bytes(full[:500])
    _raises(lambda: read_mrc(tmp_path / 'h.mrcs'), 'h.mrcs', 'truncated')


def test_bad_missing_mrc(tmp_path):
    _raises(lambda: read_mrc(tmp_path / 'nope.mrcs'), 'not found', 'nope.mrcs')


def test_bad_star_row_past_end_of_stack(tmp_path):
    _stack(tmp_path / 'p.mrcs', n=5)
    star = _star31(tmp_path / 'x.star', ['000001@p.mrcs', '000005@p.mrcs', '000009@p.mrcs'])
    _raises(lambda: particle_locations(star), 'row 2', 'image 9', 'p.mrcs', 'only 5 images', 'x.star')


def test_bad_missing_referenced_stack(tmp_path):
    _stack(tmp_path / 'p.mrcs', n=5)
    star = _star31(tmp_path / 'x.star', ['000001@p.mrcs', '000002@gone.mrcs'])
    _raises(lambda: read_particles(star), 'row 1', 'gone.mrcs', 'not found', 'x.star')


def test_bad_image_name(tmp_path):
    star = _star31(tmp_path / 'x.star', ['000001@p.mrcs', 'zero@p.mrcs'])
    _raises(lambda: particle_locations(star), 'row 1', 'zero@p.mrcs', '1-based')


def test_bad_missing_required_star_column(tmp_path):
    star = _star31(tmp_path / 'x.star', ['1@p.mrcs'], drop=('rlnDefocusU',))
    _raises(lambda: star_to_ctf(star), '_rlnDefocusU', 'x.star')
    star = _star31(tmp_path / 'y.star', ['1@p.mrcs'], drop=('rlnAngleTilt',))
    _raises(lambda: star_to_poses(star), '_rlnAngleTilt', 'y.star')
    star = _star31(tmp_path / 'z.star', ['1@p.mrcs'], drop=('rlnImageName',))
    _raises(lambda: particle_locations(star), '_rlnImageName', 'z.star')


def test_bad_star_missing_voltage(tmp_path):
    p = tmp_path / 'v.star'
    p.write_text('data_\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n_rlnDefocusV #3\n_rlnDefocusAngle #4\n'
                 '1@p.mrcs 1000 1000 0\n')
    _raises(lambda: star_to_ctf(p, D=8, Apix=1.0, cs=2.7), '_rlnVoltage', 'kv=', 'v.star')
    ctf = star_to_ctf(p, D=8, Apix=1.0, cs=2.7, kv=300)
    np.testing.assert_allclose(ctf[0], [8, 1, 1000, 1000, 0, 300, 2.7, 0.1, 0], rtol=1e-6)  # w 0.1, ps 0 defaults


def test_bad_nan_inf_pixels(tmp_path):
    data = np.zeros((5, 8, 8), np.float32)
    data[3, 2, 2] = np.inf
    _raw_mrc(tmp_path / 'n.mrcs', data)
    st = MRCStack(tmp_path / 'n.mrcs')
    assert st.images([0, 1, 2]).shape == (3, 8, 8)  # clean batches read fine
    _raises(lambda: st.images([1, 3]), 'image 3', 'NaN or Inf', 'n.mrcs')
    _raises(lambda: read_mrc(tmp_path / 'n.mrcs'), 'image 3')
    data[3, 2, 2] = np.nan
    _raw_mrc(tmp_path / 'n.mrcs', data)
    _raises(lambda: read_particles(tmp_path / 'n.mrcs', [4, 3]), 'image 3')


def test_bad_ctf_pickle_columns(tmp_path):
    save_pkl(tmp_path / 'c.pkl', np.ones((4, 8), np.float32))
    _raises(lambda: load_ctf(tmp_path / 'c.pkl'), 'c.pkl', '(4, 8)', '(N, 9)')
    save_pkl(tmp_path / 'c1.pkl', np.ones(9, np.float32))
    _raises(lambda: load_ctf(tmp_path / 'c1.pkl'), 'c1.pkl', '(N, 9)')


def test_bad_pose_pickle_shape(tmp_path):
    save_pkl(tmp_path / 'p.pkl', (np.zeros((4, 3)), np.zeros((4, 2))))
    _raises(lambda: load_poses(tmp_path / 'p.pkl'), 'p.pkl', '(4, 3)', '(N, 3, 3)')
    save_pkl(tmp_path / 't.pkl', (np.tile(np.eye(3), (4, 1, 1)), np.zeros((4, 3))))
    _raises(lambda: load_poses(tmp_path / 't.pkl'), 't.pkl', '(4, 3)', '(4, 2)')
    save_pkl(tmp_path / 'm.pkl', np.tile(np.diag([1., 1, -1]), (2, 1, 1)))  # a reflection
    _raises(lambda: load_poses(tmp_path / 'm.pkl'), 'row 0', 'rotation')


def test_bad_pose_translations_in_pixels(tmp_path):
    save_pkl(tmp_path / 'p.pkl', (np.tile(np.eye(3), (3, 1, 1)), np.array([[0.1, 0.0], [12.0, -3.0], [0, 0]])))
    _raises(lambda: load_poses(tmp_path / 'p.pkl', D=128), 'p.pkl', 'pixels', 'fraction', '128')


def test_bad_count_mismatch(tmp_path):
    save_poses(tmp_path / 'p.pkl', np.tile(np.eye(3), (3, 1, 1)), np.zeros((3, 2)))
    _raises(lambda: load_poses(tmp_path / 'p.pkl', N=5), 'p.pkl', '3 particles', '5 particles')
    save_ctf(tmp_path / 'c.pkl', np.tile(np.array([8, 1, 1e4, 1e4, 0, 300, 2.7, 0.1, 0]), (3, 1)))
    _raises(lambda: load_ctf(tmp_path / 'c.pkl', N=4), 'c.pkl', '3 particles', '4 particles')
    _raises(lambda: write_star(tmp_path / 'x.star', ['1@a.mrcs'] * 2, load_ctf(tmp_path / 'c.pkl')), '2 particles', '3 particles')
    assert not (tmp_path / 'x.star').exists()


def test_bad_unknown_file_type(tmp_path):
    (tmp_path / 'parts.h5').write_bytes(b'')
    _raises(lambda: particle_locations(tmp_path / 'parts.h5'), 'parts.h5', "unknown particle file type '.h5'", '.star')


def test_bad_missing_star_and_cs_files(tmp_path):
    _raises(lambda: read_star(tmp_path / 'a.star'), 'not found', 'a.star')
    _raises(lambda: read_cs(tmp_path / 'a.cs'), 'not found', 'a.cs')
    _raises(lambda: load_pkl(tmp_path / 'a.pkl'), 'not found', 'a.pkl')
    (tmp_path / 'junk.cs').write_bytes(b'not numpy')
    _raises(lambda: read_cs(tmp_path / 'junk.cs'), 'junk.cs')
