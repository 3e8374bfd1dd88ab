"""drgnai_nb.cli: the `drgnai-nb` console script, run in-process through `main([...])` (plus one real subprocess)."""
import json
import shutil
import subprocess

import numpy as np
import pytest

from drgnai_nb.cli import COMMANDS, main
from drgnai_nb import io, metrics

PFCRT = 'FinalRefinement-OriginalParticles-PfCRT.star'


def _run(capsys, *args):
    "Run `drgnai-nb args...` in-process; return (exit code, stdout, stderr)."
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _fails(capsys, *args, needles=(), absent=()):
    "The command exits 2 with a one-line `drgnai-nb: error:` message (no traceback) and writes none of `absent`."
    code, out, err = _run(capsys, *args)
    assert code == 2, (code, out, err)
    assert err.startswith('drgnai-nb: error:') and 'Traceback' not in err, err
    for n in needles: assert n in err, (n, err)
    for p in absent: assert not p.exists(), p
    return err


@pytest.fixture(scope='module')
def sim(tmp_path_factory):
    "A small noise-free simulated dataset (D=32, 200 images)."
    d = tmp_path_factory.mktemp('cli') / 'sim'
    assert main(['simulate', str(d), '-n', '200', '-D', '32', '--snr', '0', '--seed', '1', '--no-progress']) == 0
    return d


@pytest.fixture(scope='module')
def bp(sim):
    "Backprojection of `sim` with its true poses and CTF."
    out = sim.parent / 'bp' / 'vol.mrc'
    assert main(['backproject', str(sim / 'particles.mrcs'), '--poses', str(sim / 'poses.pkl'), '--ctf', str(sim / 'ctf.pkl'),
                 '-o', str(out), '--no-progress']) == 0
    return out


# ---------------------------------------------------------------- help
def test_help_every_command(capsys):
    code, out, _ = _run(capsys, '--help')
    assert code == 0
    for name in COMMANDS: assert name in out
    for name in ('simulate', 'parse', 'downsample', 'backproject', 'fsc', 'pose-error', 'write-star', 'filter-cs'):
        code, out, _ = _run(capsys, name, '--help')
        assert code == 0 and 'example:' in out and f'drgnai-nb {name}' in out, name


def test_help_script_subprocess():
    exe = shutil.which('drgnai-nb')
    if exe is None: pytest.skip('drgnai-nb is not on PATH (package not installed)')
    r = subprocess.run([exe, '--help'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and 'backproject' in r.stdout and 'pose-error' in r.stdout


def test_usage_errors(capsys):
    code, _, err = _run(capsys)  # no command
    assert code == 2 and 'COMMAND' in err
    code, _, err = _run(capsys, 'nope')
    assert code == 2 and 'invalid choice' in err


# ---------------------------------------------------------------- simulate, backproject, fsc
def test_simulate_outputs(sim, capsys):
    for f in ('particles.mrcs', 'particles.star', 'ctf.pkl', 'poses.pkl', 'vol.mrc', 'labels.pkl', 'sim_config.yaml'):
        assert (sim / f).is_file(), f
    info = io.mrc_header(sim / 'particles.mrcs')
    assert info.shape == (200, 32, 32) and info.Apix == pytest.approx(3.0)
    _fails(capsys, 'simulate', sim, '-n', '10', '-D', '32', needles=('--overwrite',))


def test_simulate_bad_config(tmp_path, capsys):
    _fails(capsys, 'simulate', tmp_path / 's', '-D', '33', needles=('D must be even',), absent=(tmp_path / 's' / 'particles.mrcs',))
    _fails(capsys, 'simulate', tmp_path / 's', '--defocus', '2', '1', needles=('defocus',))
    _fails(capsys, 'simulate', tmp_path / 's', '--hinge-axis', '0', '0', '0', needles=('hinge_axis',), absent=(tmp_path / 's' / 'particles.mrcs',))


def test_simulate_hinge_axis(tmp_path):
    "--hinge-axis swings the arm about another axis: same molecule at u = 0, another state 1; recorded in sim_config.yaml."
    import yaml
    args = ['-n', '4', '-D', '16', '--snr', '0', '--heterogeneity', 'discrete', '--n-states', '2', '--no-progress']
    assert main(['simulate', str(tmp_path / 'z'), *args]) == 0
    assert main(['simulate', str(tmp_path / 'p'), *args, '--hinge-axis', '0.486', '-0.874', '0']) == 0
    assert yaml.safe_load((tmp_path / 'p' / 'sim_config.yaml').read_text())['hinge_axis'] == [0.486, -0.874, 0.0]
    assert yaml.safe_load((tmp_path / 'z' / 'sim_config.yaml').read_text())['hinge_axis'] == [0.0, 0.0, 1.0]
    v = {k: [io.read_mrc(tmp_path / k / f'vol_{s:03d}.mrc')[0] for s in (0, 1)] for k in 'zp'}
    assert np.array_equal(v['z'][0], v['p'][0]) and not np.allclose(v['z'][1], v['p'][1], atol=1e-3)


def test_backproject_matches_truth(sim, bp):
    vol, info = io.read_mrc(bp)
    assert vol.shape == (32, 32, 32) and info.Apix == pytest.approx(3.0)
    for k in (1, 2): assert bp.with_name(f'vol_half{k}.mrc').is_file()
    r = metrics.fsc(vol, io.read_mrc(sim / 'vol.mrc')[0])
    assert r.resolution(0.5).freq > 0.25  # FSC = 0.5 beyond half of Nyquist, noise-free


def test_backproject_star_input(sim, bp, tmp_path, capsys):
    "Particles, poses and CTF all from the simulated .star: same volume as from the pickles."
    out = tmp_path / 'v.mrc'
    star = sim / 'particles.star'
    code, stdout, err = _run(capsys, 'backproject', star, '--poses', star, '--ctf', star, '-o', out, '--no-progress',
                             '--ind', _ind(tmp_path, np.arange(0, 200, 2)), '--pad', 1)
    assert code == 0, err
    assert 'backprojected 100 images' in stdout and 'FSC=0.143' in stdout and 'Å' in stdout


def test_fsc_outputs(sim, bp, tmp_path, capsys):
    code, out, _ = _run(capsys, 'fsc', bp, sim / 'vol.mrc')
    assert code == 0 and 'FSC=0.5' in out and 'FSC=0.143' in out and 'AUC' in out and 'Å' in out
    txt, png = tmp_path / 'fsc.txt', tmp_path / 'fsc.png'
    code, out, _ = _run(capsys, 'fsc', bp, sim / 'vol.mrc', '--json', '-o', txt, '--plot', png, '--mask', sim / 'vol.mrc')
    d = json.loads(out)
    assert code == 0 and d['D'] == 32 and d['Apix'] == pytest.approx(3.0) and 0 < d['auc'] <= 1
    assert d['fsc0.143']['angstrom'] == pytest.approx(3.0 * d['fsc0.143']['px'])
    assert np.loadtxt(txt).shape == (17, 4) and png.stat().st_size > 1000
    _fails(capsys, 'fsc', bp, tmp_path / 'missing.mrc', needles=('missing.mrc',))


# ---------------------------------------------------------------- pose-error
def test_pose_error(sim, tmp_path, capsys):
    poses = sim / 'poses.pkl'
    code, out, _ = _run(capsys, 'pose-error', poses, poses, '-D', 32)
    assert code == 0 and 'out-of-plane' in out and 'translation' in out and 'mirrored hand: no' in out
    code, out, _ = _run(capsys, 'pose-error', poses, poses, '--ctf', sim / 'ctf.pkl', '--json')
    d = json.loads(out)
    assert d['N'] == 200 and d['D'] == 32 and d['mirror'] is False
    for k in ('rot_mean', 'out_of_plane_median', 'in_plane_mean', 'trans_mean', 'trans_median'): assert d[k] == pytest.approx(0, abs=1e-2), k
    # a global rotation of the predictions is removed by the alignment; --ind selects a subset of the ground truth
    rot, trans = io.load_poses(poses)
    A = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0]; A *= np.linalg.det(A)
    ind = np.arange(50, 150)
    pred = tmp_path / 'pred.pkl'
    io.save_poses(pred, rot[ind] @ A.T, trans[ind])
    code, out, _ = _run(capsys, 'pose-error', pred, poses, '-D', 32, '--json', '--ind', _ind(tmp_path, ind))
    d = json.loads(out)
    assert code == 0 and d['N'] == 100 and d['rot_median'] < 0.01
    _fails(capsys, 'pose-error', poses, poses, needles=('-D',))  # translations need the box
    _fails(capsys, 'pose-error', pred, poses, '-D', 32, needles=('100', '200'))  # count mismatch


# ---------------------------------------------------------------- parse
def test_parse_pfcrt_goldens(cryodrgn_data, tmp_path, capsys):
    p, c = tmp_path / 'pose.pkl', tmp_path / 'ctf.pkl'
    code, out, err = _run(capsys, 'parse', cryodrgn_data / PFCRT, '--poses', p, '--ctf', c, '-D', 300, '--Apix', 1.035)
    assert code == 0, err
    assert 'parsed 5 particles' in out and 'D=300' in out and 'Apix=1.035' in out
    rot, trans = io.load_pkl(p)
    ref_rot, ref_trans = io.load_pkl(cryodrgn_data / 'pose.star.pkl')
    np.testing.assert_allclose(rot, ref_rot, atol=1e-6); np.testing.assert_allclose(trans, ref_trans, atol=1e-6)
    ctf, ref = io.load_pkl(c), io.load_pkl(cryodrgn_data / 'ctf1.pkl')
    assert ctf.dtype == np.float32 and np.linalg.norm(ctf - ref) < 1e-4


def test_parse_needs_box(cryodrgn_data, tmp_path, capsys):
    "RELION 3.0 star without _rlnImageSize and without its stacks: -D is required; nothing is written."
    p = tmp_path / 'pose.pkl'
    _fails(capsys, 'parse', cryodrgn_data / PFCRT, '--poses', p, needles=('-D',), absent=(p,))
    star = tmp_path / 'nopix.star'  # a RELION 3.0 star without any pixel size: the CTF needs --Apix
    star.write_text('data_\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n_rlnDefocusAngle\n_rlnVoltage\n'
                    '_rlnSphericalAberration\n1@a.mrcs 10000 9000 10 300 2.7\n2@a.mrcs 11000 9000 10 300 2.7\n')
    _fails(capsys, 'parse', star, '--ctf', p, '-D', 64, needles=('--Apix',), absent=(p,))
    code, out, _ = _run(capsys, 'parse', star, '--ctf', p, '-D', 64, '--Apix', 2)
    assert code == 0 and np.allclose(io.load_ctf(p)[:, :4], [[64, 2, 10000, 9000], [64, 2, 11000, 9000]])
    # without -D the box comes from the header of the stack the star names, found through --datadir
    (tmp_path / 'data').mkdir()
    io.write_mrc(tmp_path / 'data' / 'a.mrcs', np.zeros((2, 16, 16), np.float32), is_stack=True)
    code, out, err = _run(capsys, 'parse', star, '--ctf', p, '--Apix', 2, '--datadir', tmp_path / 'data')
    assert code == 0 and 'D=16' in out and (io.load_ctf(p)[:, 0] == 16).all(), err


def test_parse_relion31(cryodrgn_data, tmp_path, capsys):
    p, c = tmp_path / 'pose.pkl', tmp_path / 'ctf.pkl'
    code, out, _ = _run(capsys, 'parse', cryodrgn_data / 'relion31.star', '--poses', p, '--ctf', c)
    assert code == 0 and 'D=256' in out and 'Apix=2.806' in out
    rot, trans = io.load_poses(p)
    ref_rot, ref_trans = io.star_to_poses(cryodrgn_data / 'relion31.star')
    np.testing.assert_allclose(rot, ref_rot, atol=1e-6); np.testing.assert_allclose(trans, ref_trans, atol=1e-6)
    ctf = io.load_ctf(c, N=5)
    np.testing.assert_allclose(ctf[:, [0, 1, 5, 6, 7]], np.tile([256, 2.806, 300, 0.01, 0.1], (5, 1)), rtol=1e-6)
    # overrides: -D rescales translations (fractions of a different box), --kv replaces the voltage
    code, _, _ = _run(capsys, 'parse', cryodrgn_data / 'relion31.star', '--poses', p, '--ctf', c, '-D', 128, '--kv', 200)
    _, trans2 = io.load_poses(p)
    assert code == 0 and np.allclose(trans2, ref_trans * 2, atol=1e-6) and (io.load_ctf(c)[:, 5] == 200).all()


def test_parse_bad_input(tmp_path, capsys):
    p = tmp_path / 'p.pkl'
    (tmp_path / 'x.txt').write_text('hello\n')
    _fails(capsys, 'parse', tmp_path / 'x.txt', '--poses', p, needles=('unknown', '.txt'), absent=(p,))
    _fails(capsys, 'parse', tmp_path / 'missing.star', '--poses', p, needles=('missing.star',), absent=(p,))
    _fails(capsys, 'parse', tmp_path / 'x.txt', needles=('--poses',))


# ---------------------------------------------------------------- downsample, write-star, filter-cs
def _ind(tmp_path, ind, name='ind.pkl'):
    return io.save_ind(tmp_path / name, np.asarray(ind))


def test_downsample(sim, tmp_path, capsys):
    out = tmp_path / 'ds.mrcs'
    code, stdout, _ = _run(capsys, 'downsample', sim / 'particles.mrcs', '-D', 16, '-o', out, '--no-progress')
    info = io.mrc_header(out)
    assert code == 0 and info.shape == (200, 16, 16) and info.Apix == pytest.approx(6.0) and '6 Å' in stdout
    # .star input with a selection and --write-star: the new star has box 16 and 6 Å pixels, poses kept
    out2, star = tmp_path / 'ds2.mrcs', tmp_path / 'ds2.star'
    code, _, err = _run(capsys, 'downsample', sim / 'particles.star', '-D', 16, '-o', out2, '--write-star', star,
                        '--ind', _ind(tmp_path, [5, 3, 7]), '--no-progress')
    assert code == 0, err
    ctf = io.star_to_ctf(star)
    assert ctf.shape == (3, 9) and (ctf[:, 0] == 16).all() and np.allclose(ctf[:, 1], 6.0)
    np.testing.assert_allclose(ctf[:, 2], io.load_ctf(sim / 'ctf.pkl')[[5, 3, 7], 2], rtol=1e-6)
    rot, trans = io.star_to_poses(star)
    ref_rot, ref_trans = io.load_poses(sim / 'poses.pkl')
    np.testing.assert_allclose(rot, ref_rot[[5, 3, 7]], atol=1e-5); np.testing.assert_allclose(trans, ref_trans[[5, 3, 7]], atol=1e-5)
    np.testing.assert_allclose(io.read_particles(star), io.read_mrc(out2)[0])
    bad = tmp_path / 'bad.mrcs'
    _fails(capsys, 'downsample', sim / 'particles.mrcs', '-D', 15, '-o', bad, needles=('even',), absent=(bad,))
    _fails(capsys, 'downsample', sim / 'particles.mrcs', '-D', 16, '-o', bad, '--write-star', tmp_path / 'b.star',
           needles=('--write-star',), absent=(bad, tmp_path / 'b.star'))


def test_write_star_roundtrip(sim, tmp_path, capsys):
    ind = np.array([10, 0, 199, 42])
    star = tmp_path / 'sub' / 'sel.star'
    code, out, err = _run(capsys, 'write-star', sim / 'particles.mrcs', '--ctf', sim / 'ctf.pkl', '--poses', sim / 'poses.pkl',
                          '-o', star, '--ind', _ind(tmp_path, ind))
    assert code == 0 and 'wrote 4 of 200' in out, err
    p, c = tmp_path / 'p.pkl', tmp_path / 'c.pkl'
    assert main(['parse', str(star), '--poses', str(p), '--ctf', str(c)]) == 0
    rot, trans = io.load_poses(p)
    ref_rot, ref_trans = io.load_poses(sim / 'poses.pkl')
    np.testing.assert_allclose(rot, ref_rot[ind], atol=1e-5); np.testing.assert_allclose(trans, ref_trans[ind], atol=1e-6)
    np.testing.assert_allclose(io.load_ctf(c), io.load_ctf(sim / 'ctf.pkl')[ind], rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(io.read_particles(star), io.read_mrc(sim / 'particles.mrcs')[0][ind])


def test_filter_cs(tmp_path, capsys):
    a = np.zeros(6, dtype=[('uid', '<u8'), ('blob/idx', '<u4'), ('ctf/df1_A', '<f4')])
    a['uid'], a['blob/idx'], a['ctf/df1_A'] = np.arange(100, 106), np.arange(6), np.linspace(1e4, 2e4, 6)
    cs = tmp_path / 'orig.cs'
    with open(cs, 'wb') as fh: np.save(fh, a)
    out = tmp_path / 'keep.cs'
    code, stdout, _ = _run(capsys, 'filter-cs', cs, '--ind', _ind(tmp_path, [4, 1]), '-o', out)
    b = io.read_cs(out)
    assert code == 0 and 'kept 2 of 6' in stdout and b.dtype == a.dtype and b['uid'].tolist() == [104, 101]
    _fails(capsys, 'filter-cs', cs, '--ind', _ind(tmp_path, [9], 'bad.pkl'), '-o', tmp_path / 'x.cs',
           needles=('out of range',), absent=(tmp_path / 'x.cs',))


# ---------------------------------------------------------------- bad input catalogue
def test_bad_inputs(sim, tmp_path, capsys):
    out = tmp_path / 'v.mrc'
    parts, poses, ctf = sim / 'particles.mrcs', sim / 'poses.pkl', sim / 'ctf.pkl'
    # missing particle file / pose file
    _fails(capsys, 'backproject', tmp_path / 'none.mrcs', '--poses', poses, '-o', out, needles=('none.mrcs', 'not found'), absent=(out,))
    _fails(capsys, 'backproject', parts, '--poses', tmp_path / 'none.pkl', '-o', out, needles=('none.pkl',), absent=(out,))
    # count mismatch: poses and CTF of 150 particles for a stack of 200
    rot, trans = io.load_poses(poses)
    io.save_poses(tmp_path / 'p150.pkl', rot[:150], trans[:150])
    io.save_ctf(tmp_path / 'c150.pkl', io.load_ctf(ctf)[:150])
    _fails(capsys, 'backproject', parts, '--poses', tmp_path / 'p150.pkl', '-o', out, needles=('150', '200'), absent=(out,))
    _fails(capsys, 'backproject', parts, '--poses', poses, '--ctf', tmp_path / 'c150.pkl', '-o', out, needles=('150', '200'), absent=(out,))
    _fails(capsys, 'write-star', parts, '--ctf', tmp_path / 'c150.pkl', '-o', tmp_path / 'x.star', needles=('150',),
           absent=(tmp_path / 'x.star',))
    # unknown particle file type
    (tmp_path / 'p.xyz').write_text('x')
    _fails(capsys, 'backproject', tmp_path / 'p.xyz', '--poses', poses, '-o', out, needles=('unknown', '.xyz'), absent=(out,))
    _fails(capsys, 'downsample', tmp_path / 'p.xyz', '-D', 16, '-o', tmp_path / 'd.mrcs', needles=('.xyz',))
    # output over an input
    _fails(capsys, 'downsample', parts, '-D', 16, '-o', parts, needles=('overwrite an input',))
