"""Simulation from atomic models (`drgnai_nb.atomic`, `drgnai-nb simulate --model`): the map's centre and integral,
Fourier-slice against real-space projections, a noise-free set backprojected with its true poses, real datasets'
poses and CTFs, heterogeneity and input errors. Tests on 1HZH skip without ../shared/models/1hzh.pdb."""
from pathlib import Path
import numpy as np
import pytest
import torch

from drgnai_nb import atomic
from drgnai_nb.cli import main
from drgnai_nb.io import read_mrc, load_poses, load_ctf, load_pkl, write_star, DrgnaiInputError
from drgnai_nb.metrics import fsc, align_translation
from drgnai_nb.so3 import random_rotations

ROOT = Path(__file__).resolve().parents[1]
HZH = (ROOT / '..' / 'shared' / 'models' / '1hzh.pdb').resolve()
FAB = '//H/1-220;//L'  # one Fab arm of 1HZH: heavy chain H up to the hinge and its light chain L


@pytest.fixture(scope='module')
def hzh():
    if not HZH.is_file(): pytest.skip(f'atomic model not found at {HZH}')
    return HZH


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    "A 200-atom model written with gemmi (chains A and B), for tests that need no shared file."
    import gemmi
    rng = np.random.default_rng(3)
    st = gemmi.Structure(); st.add_model(gemmi.Model('1'))
    for c, off in (('A', -6.0), ('B', 6.0)):
        ch = gemmi.Chain(c)
        for i in range(100):
            r = gemmi.Residue(); r.name = 'GLY'; r.seqid = gemmi.SeqId(i + 1, ' ')
            at = gemmi.Atom(); el = ['C', 'N', 'O'][i % 3]; at.name = el; at.element = gemmi.Element(el); at.occ = 1.0
            at.pos = gemmi.Position(*(rng.normal(size=3) * [7, 5, 4] + [off, 0, 0]))
            r.add_atom(at); ch.add_residue(r)
        st[0].add_chain(ch)
    p = tmp_path_factory.mktemp('toy') / 'toy.pdb'
    st.setup_entities(); st.write_pdb(str(p))
    return p


def test_map_centre_and_integral(hzh):
    "1HZH at box 64, 4 Å/px: Σ voxels · Apix³ = Σ f(0) of the atoms, and the centre of mass sits at voxel D//2."
    m = atomic.read_model(hzh)
    assert len(m) == 10576  # 10,355 ATOM + HETATM sugars, no waters or hydrogens
    D, Apix = 64, 4.0
    v = atomic.atomic_volume(m, D, Apix).double()
    f0 = m.a.sum(1)
    assert abs(float(v.sum() * Apix ** 3 / f0.sum()) - 1) < 1e-3
    ax = (torch.arange(D) - D // 2).double() * Apix
    cen = torch.stack([(v.sum((0, 1)) * ax).sum(), (v.sum((0, 2)) * ax).sum(), (v.sum((1, 2)) * ax).sum()]) / v.sum()
    expect = ((m.xyz - m.centre_of_mass()) * f0[:, None]).sum(0) / f0.sum()  # scattering- not mass-weighted centroid
    assert (cen - expect).abs().max() < 0.05 and expect.norm() < 1.0


def test_fourier_vs_real_projection(hzh):
    "The simulator's Fourier-slice projections (map oversampled 4x) against the atoms' own projections: < 1.5 %."
    m = atomic.read_model(hzh)
    R = random_rotations(3, torch.Generator().manual_seed(0), torch.float64)
    e4 = atomic.fourier_vs_real_error(m, R, 64, 4.0, pad=4)
    e1 = atomic.fourier_vs_real_error(m, R, 64, 4.0, pad=1)
    assert e4 < 0.015 and e4 < e1 / 3


def _mirror(v):
    "The map mirrored through the box centre along z (voxel D//2 stays)."
    return np.roll(v[::-1], 1, axis=0)


def test_backprojection_reaches_nyquist(hzh, tmp_path, one_thread):
    "A noise-free 1HZH set backprojected with its true poses: FSC >= 0.5 with the simulator's map to >= 0.9 Nyquist, far less mirrored."
    sim, out = tmp_path / 'sim', tmp_path / 'bp.mrc'
    assert main(['simulate', str(sim), '--model', str(hzh), '-n', '1500', '-D', '32', '--Apix', '7.5', '--snr', '0',
                 '--preferred-views', '3', '--uniform-fraction', '0.5', '--no-progress']) == 0
    assert main(['backproject', str(sim / 'particles.mrcs'), '--poses', str(sim / 'poses.pkl'), '--ctf', str(sim / 'ctf.pkl'),
                 '-o', str(out), '--no-progress']) == 0
    bp, truth = read_mrc(out)[0], read_mrc(sim / 'vol.mrc')[0]
    good = fsc(align_translation(bp, truth)[0], truth).resolution(0.5).freq / 0.5
    mir = fsc(align_translation(bp, _mirror(truth))[0], _mirror(truth)).resolution(0.5).freq / 0.5
    print(f'FSC=0.5 at {good:.3f} of Nyquist; against the mirrored map {mir:.3f}')
    assert good >= 0.9 and mir < 0.5 * good


def test_poses_and_ctf_from_a_dataset(toy, tmp_path):
    "--poses-from / --ctf-from a RELION star: every drawn pose and CTF is a row of the file; shifts kept in Å."
    n, D0, A0 = 50, 48, 3.0
    g = torch.Generator().manual_seed(1)
    rot = random_rotations(n, g).numpy(); trans = (torch.rand(n, 2, generator=g).numpy() - 0.5) * 0.2
    ctf = np.zeros((n, 9), np.float32)
    ctf[:, 0], ctf[:, 1], ctf[:, 2] = D0, A0, np.linspace(8000, 30000, n)
    ctf[:, 3], ctf[:, 4], ctf[:, 5], ctf[:, 6], ctf[:, 7] = ctf[:, 2] + 100, 30, 200, 2.0, 0.07
    star = write_star(tmp_path / 'real.star', [('stack.mrcs', i) for i in range(n)], ctf, rot, trans)
    sim = tmp_path / 'sim'
    assert main(['simulate', str(sim), '--model', str(toy), '-n', '80', '-D', '32', '--Apix', '1.5', '--snr', '1',
                 '--poses-from', str(star), '--ctf-from', str(star), '--noise-color', '1', '--no-progress']) == 0
    r, t = load_poses(sim / 'poses.pkl'); c = load_ctf(sim / 'ctf.pkl')
    d = np.abs(r[:, None] - rot[None]).max(axis=(2, 3))  # (80, 50)
    row = d.argmin(1)
    assert d.min(1).max() < 1e-5
    np.testing.assert_allclose(t * 32 * 1.5, trans[row] * D0 * A0, atol=1e-3)  # the same shift in Å
    np.testing.assert_allclose(c[:, 2], ctf[row, 2], rtol=1e-5)  # defocus of the same particle
    assert (c[:, 0] == 32).all() and np.allclose(c[:, 1], 1.5) and np.allclose(c[:, 5], 200) and np.allclose(c[:, 7], 0.07)


def test_heterogeneous_sets(toy, tmp_path):
    "Two models are two states (superposed on their common atoms); --moving gives u in [0, 1] and the motion's maps."
    import gemmi
    st = gemmi.read_structure(str(toy))
    st[0]['B'][0][0].pos = gemmi.Position(30, 0, 0)  # one atom moved far: a second conformation
    st[0].transform_pos_and_adp(gemmi.Transform(gemmi.Mat33([[0, -1, 0], [1, 0, 0], [0, 0, 1]]), gemmi.Vec3(4, 1, -2)))
    other = tmp_path / 'other.cif'; st.setup_entities(); st.make_mmcif_document().write_file(str(other))
    d1 = tmp_path / 'disc'
    assert main(['simulate', str(d1), '--model', str(toy), str(other), '-n', '40', '-D', '32', '--Apix', '2', '--no-progress',
                 '--junk-fraction', '0.1']) == 0
    lab = load_pkl(d1 / 'labels.pkl')
    assert set(np.unique(lab)) <= {-1, 0, 1} and (lab == 0).any() and (lab == 1).any()
    v0, v1 = read_mrc(d1 / 'vol_000.mrc')[0], read_mrc(d1 / 'vol_001.mrc')[0]
    diff = np.abs(v0 - v1).max() / np.abs(v0).max()
    assert 1e-3 < diff < 0.5  # one atom differs, the rest superposed
    d2 = tmp_path / 'cont'
    assert main(['simulate', str(d2), '--model', str(toy), '-n', '40', '-D', '32', '--Apix', '2', '--moving', '//B',
                 '--motion-angle', '60', '--no-progress']) == 0
    u = load_pkl(d2 / 'u.pkl')
    assert u.min() >= 0 and u.max() <= 1 and np.ptp(u) > 0.5 and len(sorted(d2.glob('vol_*.mrc'))) == 3
    from drgnai_nb.truth import TruthMaps  # the true map of any image: the motion re-rendered at its u
    tm = TruthMaps(d2)
    assert np.allclose(tm.at(0, 0.5), read_mrc(d2 / 'vol_001.mrc')[0], atol=1e-6 * np.abs(tm.at(0, 0.5)).max())
    d3 = tmp_path / 'positions'  # --motion-states: the moving atoms at K fixed positions are K discrete states
    assert main(['simulate', str(d3), '--model', str(toy), '-n', '40', '-D', '32', '--Apix', '2', '--moving', '//B',
                 '--motion-angle', '60', '--motion-states', '3', '--junk-fraction', '0.1', '--no-progress']) == 0
    lab, u = load_pkl(d3 / 'labels.pkl'), load_pkl(d3 / 'u.pkl')
    assert set(np.unique(lab)) == {-1, 0, 1, 2} and np.allclose(u[lab >= 0], lab[lab >= 0] / 2)
    vols = [read_mrc(f)[0] for f in sorted(d3.glob('vol_*.mrc'))]
    assert len(vols) == 3 and np.allclose(vols[1], tm.at(0, 0.5), atol=1e-6 * np.abs(vols[1]).max())  # the same motion, same maps
    assert np.array_equal(TruthMaps(d3).at(2, 1.0), vols[2])
    assert main(['simulate', str(tmp_path / 'bad'), '--model', str(toy), '--motion-states', '2', '--no-progress']) == 2  # needs --moving


def test_motion_through_the_pose_is_exact(toy):
    "The simulator's moving part (the unmoved arm in pose R A(u), shifted in-plane) equals the moved atoms' projections."
    cfg = atomic.AtomicSimConfig(models=[toy], n_images=12, D=32, Apix=2.0, snr=0, ctf=False, moving='//B', motion_angle=70.0,
                                 shift_px=0, pad=4)
    sim = atomic.simulate_atomic(cfg, progress=False)
    m = atomic.read_model(toy)
    mot = atomic.make_motion(m, atomic.select_atoms(m, toy, '//B'), 70.0)
    c = m.centre_of_mass()
    ref = torch.stack([-atomic.project_atoms(mot.apply(m, float(u)), sim.rot[i:i + 1].double(), 32, 2.0, centre=c)[0]
                       for i, u in enumerate(sim.u)])
    from drgnai_nb.fft import ht2_center
    from drgnai_nb.lattice import Lattice
    disc = (Lattice(33).coords[:, :2].norm(dim=-1) < 0.5).view(33, 33)[:-1, :-1]  # a sub-pixel shift of the Nyquist row is undefined
    a, b = ht2_center(sim.images.double())[:, disc], ht2_center(ref)[:, disc]
    rel = float((a - b).norm() / b.norm())
    assert rel < 0.02  # the Fourier-slice interpolation error, not a convention error (those are O(1))


def test_bad_input_is_refused(toy, tmp_path):
    out = tmp_path / 'x'
    assert main(['simulate', str(out), '--poses-from', 'p.star']) == 2  # atomic options need --model
    assert main(['simulate', str(out), '--model', str(tmp_path / 'none.pdb')]) == 2
    assert main(['simulate', str(out), '--model', str(toy), '--heterogeneity', 'discrete']) == 2
    assert main(['simulate', str(out), '--model', str(toy), str(toy), '--moving', '//B']) == 2
    assert main(['simulate', str(out), '--model', str(toy), '--moving', '//Z']) == 2  # selects no atoms
    bad = tmp_path / 'bad.pdb'; bad.write_text('this is not a model\n')
    assert main(['simulate', str(out), '--model', str(bad)]) == 2
    assert not out.exists()


def test_map_input_and_bfactors(toy, tmp_path):
    "--map MAP.mrc gives the same noise-free images as the model the map was made from; the atoms' B-factors blur."
    d1, d2 = tmp_path / 'from_model', tmp_path / 'from_map'
    common = ['-n', '8', '--snr', '0', '--seed', '4', '--no-progress']
    assert main(['simulate', str(d1), '--model', str(toy), '-D', '32', '--Apix', '2', *common]) == 0
    assert main(['simulate', str(d2), '--map', str(d1 / 'vol.mrc'), *common]) == 0  # box and pixel size from the header
    a, b = read_mrc(d1 / 'particles.mrcs')[0], read_mrc(d2 / 'particles.mrcs')[0]
    assert a.shape == b.shape == (8, 32, 32) and np.abs(a - b).max() < 1e-4 * np.abs(a).max()
    assert main(['simulate', str(tmp_path / 'm'), '--map', str(d1 / 'vol.mrc'), '--Apix', '3']) == 2  # header says 2 Å
    m = atomic.read_model(toy); m.bfac[:] = 100.0
    sharp, soft = atomic.atomic_volume(m, 32, 2.0), atomic.atomic_volume(m, 32, 2.0, model_bfactors=True)
    assert soft.max() < 0.8 * sharp.max() and abs(float(soft.sum() / sharp.sum()) - 1) < 1e-3


@pytest.mark.parametrize('name', ['relion31.star', 'relion5.star', 'FinalRefinement-OriginalParticles-PfCRT.star'])
def test_poses_and_ctf_from_real_stars(cryodrgn_data, toy, tmp_path, name):
    "Real RELION 3.0 / 3.1 / 5 stars (cryoDRGN's goldens): each particle's rotation, shift (Å) and defocus come from one row."
    from drgnai_nb.io import read_star, star_to_poses, star_to_ctf
    f = cryodrgn_data / name
    s = read_star(f)
    rot, frac = star_to_poses(s, D=None if s.box is not None else 1)
    shift_A = frac * ((s.box if s.box is not None else 1) * s.Apix)[:, None]
    dfu = star_to_ctf(s, D=None if s.box is not None else 1)[:, 2]
    sim = tmp_path / 'sim'
    assert main(['simulate', str(sim), '--model', str(toy), '-n', '30', '-D', '32', '--Apix', '1.7', '--snr', '1',
                 '--poses-from', str(f), '--ctf-from', str(f), '--no-progress']) == 0
    r, t = load_poses(sim / 'poses.pkl'); c = load_ctf(sim / 'ctf.pkl')
    row = np.abs(r[:, None] - rot[None]).max(axis=(2, 3)).argmin(1)
    assert np.abs(r - rot[row]).max() < 1e-5
    np.testing.assert_allclose(t * 32 * 1.7, shift_A[row], atol=1e-3)
    np.testing.assert_allclose(c[:, 2], dfu[row], rtol=1e-5)
    assert (c[:, 0] == 32).all() and np.allclose(c[:, 1], 1.7)
