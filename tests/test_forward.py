"""Forward-model goldens (cryoDRGN's preprocessing, translation and handedness data) and the closed loop
simulate -> backproject -> FSC against the ground truth."""
import numpy as np
import pytest
import torch
from drgnai_nb.data import ImageSource, ParticleDataset, preprocess, estimate_norm
from drgnai_nb.fft import ht2_center, iht2_center, symmetrize_ht, crop_ht
from drgnai_nb.forward import backproject_dataset, project, VoxelBackprojector
from drgnai_nb.io import load_pkl, write_mrc, save_ctf, save_poses
from drgnai_nb.lattice import Lattice
from drgnai_nb.metrics import fsc
from drgnai_nb.simulate import SimConfig, simulate

HAND_IDX = [43, 12, 53, 64, 31, 56, 75, 63, 27, 62, 96]


def test_hand_preprocessing_golden(cryodrgn_data):
    "cryoDRGN's training input for 11 hand images: window, invert, HT, symmetrise, normalise (atol 1e-5)."
    src = ImageSource(cryodrgn_data / 'hand.mrcs')
    ds = ParticleDataset(src)  # invert and window on by default; sigma from all 100 images (n < 1000)
    assert abs(ds.norm[1] - 94.4595) < 1e-3 and ds.norm[0] == 0
    got = ds.get_batch(HAND_IDX).numpy()
    want = np.load(cryodrgn_data / 'hand_11_particles.npy')
    assert got.shape == want.shape == (11, 65, 65)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_hand_translation_golden(cryodrgn_data):
    "Hartley-domain shift by (5, 10) px moves content +5 along x (columns) and +10 along y (rows) (atol 1e-4)."
    img = ImageSource(cryodrgn_data / 'hand.mrcs').images([0]).astype(np.float64)
    h = symmetrize_ht(ht2_center(torch.from_numpy(img)))
    lat = Lattice(65)
    shifted = lat.translate_ht(h.reshape(1, -1), torch.tensor([[5.0, 10.0]], dtype=torch.float64)).reshape(1, 65, 65)
    out = iht2_center(crop_ht(shifted))[0].numpy()
    np.testing.assert_allclose(out, np.load(cryodrgn_data / 'im_shifted.npy'), atol=1e-4)


def _corr(a, b):
    a = a - a.mean((-1, -2), keepdims=True); b = b - b.mean((-1, -2), keepdims=True)
    return (a * b).sum((-1, -2)) / np.sqrt((a * a).sum((-1, -2)) * (b * b).sum((-1, -2)))


def test_hand_handedness(cryodrgn_data):
    "Backproject the even hand images with R, reproject onto the odd ones: corr >= 0.95 with R, clearly less with Rᵀ."
    imgs = ImageSource(cryodrgn_data / 'hand.mrcs').images().astype(np.float64)
    rot = torch.as_tensor(load_pkl(cryodrgn_data / 'hand_rot.pkl'), dtype=torch.float64)
    res = {}
    for name, R in (('R', rot), ('Rt', rot.transpose(1, 2))):
        bp = VoxelBackprojector(64)
        bp.add(preprocess(imgs[0::2], invert=False, window=False).double(), R[0::2])
        vol = bp.volume(reg=1e-2).double()
        reproj = project(vol, R[1::2]).numpy()
        res[name] = float(_corr(reproj, imgs[1::2]).mean())
    print('mean correlation', res)
    assert res['R'] >= 0.95
    assert res['Rt'] < res['R'] - 0.1


def _simulated_dataset(tmp_path, snr, n=2000, D=64):
    sim = simulate(SimConfig(n_images=n, D=D, snr=snr, seed=0), progress=False)
    write_mrc(tmp_path / 'p.mrcs', sim.images.numpy(), Apix=3.0)
    return sim, ParticleDataset(ImageSource(tmp_path / 'p.mrcs'))


def test_closed_loop_noise_free(tmp_path):
    "Noise-free D=64, 2,000 images with CTF: FSC with the truth >= 0.5 out to 0.9 Nyquist; the mirror is far worse."
    sim, ds = _simulated_dataset(tmp_path, snr=0)
    out = backproject_dataset(ds, sim.rot, sim.trans, sim.ctf, progress=False)
    f = fsc(out['full'], sim.volumes[0])
    shells = np.arange(len(f.fsc))
    upto = shells[(shells >= 1) & (shells <= int(0.9 * 32))]
    print('min FSC up to 0.9 Nyquist', f.fsc[upto].min(), 'res@0.5', f.resolution(0.5).px)
    assert (f.fsc[upto] >= 0.5).all()
    mirror = fsc(out['full'].flip(0), sim.volumes[0])
    assert mirror.resolution(0.5).px > 8.0  # the mirrored map only matches at low resolution


def test_closed_loop_snr01(tmp_path):
    "At SNR 0.1 the same backprojection reaches FSC 0.5 at about 3.5 px (cryoDRGN's backproject_voxel)."
    sim, ds = _simulated_dataset(tmp_path, snr=0.1)
    out = backproject_dataset(ds, sim.rot, sim.trans, sim.ctf, progress=False)
    res = fsc(out['full'], sim.volumes[0]).resolution(0.5).px
    half = fsc(out['half1'], out['half2']).resolution(0.143).px
    print('FSC=0.5 vs truth at', res, 'px; half maps 0.143 at', half, 'px')
    assert 2.6 <= res <= 4.0
    assert abs(half - res) < 1.0
