"""Benchmark of the principal 3-D variability step (`train.variability_components`, what `z_init='variability'` runs):
time per run and how well a k-means split of z (or its first principal component) recovers the truth, for a range of
band limits and iteration counts, with z the amplitudes' principal axes ('linear') and their spectral embedding
(`train.spectral_coordinates`, the trainer's default `z_init_embed='spectral'`). Residuals are taken against the mean of the true state maps at the
TRUE poses, so the figures are this step's own (the trainer's poses and mean map add their errors on top).

    python benchmarks/bench_variability.py                       # 3 states, 20 % junk, box 64, 2,000 images, SNR 0.1
    python benchmarks/bench_variability.py --kind continuous     # continuous motion: |Spearman rho| of PC1 with the coordinate
    python benchmarks/bench_variability.py -n 400 -D 32 --radii 4,8 --iters 4,16   # a quick look
"""
import argparse, os, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-n', type=int, default=2000); p.add_argument('-D', type=int, default=64)
    p.add_argument('--snr', type=float, default=0.1); p.add_argument('--kind', default='discrete', choices=['discrete', 'continuous'])
    p.add_argument('--radii', default='8,16', help='band limits, px, comma-separated')
    p.add_argument('--iters', default='8,16,32,64', help='ALS iteration counts, comma-separated')
    p.add_argument('-K', type=int, default=4, help='components')
    p.add_argument('--zdim', type=int, default=4, help='z size of the spectral embedding'); p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=os.cpu_count()); p.add_argument('--data', default=None, help='simulated set to reuse or create')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from drgnai_nb.simulate import SimConfig, simulate_to_dir
    from drgnai_nb.data import ImageSource, ParticleDataset
    from drgnai_nb.io import read_mrc, load_poses, load_ctf, load_pkl
    from drgnai_nb.forward import volume_to_ht
    from drgnai_nb.hps import VolumeCache
    from drgnai_nb.lattice import Lattice
    from drgnai_nb.ctf import ctf_from_params
    from drgnai_nb.metrics import adjusted_rand_index
    from drgnai_nb.train import variability_components, spectral_coordinates
    from sklearn.cluster import KMeans
    from scipy.stats import spearmanr
    d = Path(a.data or tempfile.mkdtemp(prefix='bench_var_'))
    if not (d / 'particles.mrcs').exists():
        sim = dict(heterogeneity='discrete', n_states=3, junk_fraction=0.2) if a.kind == 'discrete' else dict(heterogeneity='continuous')
        t0 = time.time(); simulate_to_dir(SimConfig(n_images=a.n, D=a.D, snr=a.snr, seed=a.seed, **sim), d, progress=False)
        print(f'simulated {a.n} images (box {a.D}, SNR {a.snr}, {a.kind}) in {time.time() - t0:.0f} s: {d}')
    ds = ParticleDataset(ImageSource(str(d / 'particles.mrcs'), lazy=False)); D = ds.D; lat = Lattice(D + 1)
    lab = np.asarray(load_pkl(d / 'labels.pkl')); u = np.asarray(load_pkl(d / 'u.pkl'))
    real = lab >= 0  # the mean map's residuals of junk are not conformational variability: leave them out here
    Rg, tg = load_poses(d / 'poses.pkl'); Rg = torch.as_tensor(Rg).float(); tg = torch.as_tensor(tg).float() * D
    ctf = torch.as_tensor(load_ctf(d / 'ctf.pkl')).float()
    vols = [read_mrc(f)[0] for f in sorted(d.glob('vol_*.mrc'))]
    vbar = volume_to_ht(torch.as_tensor(np.mean(vols, 0)), pad=2) / ds.norm[1]
    idx_real = np.flatnonzero(real)
    print(f'{len(idx_real)} particles (junk left out), K = {a.K}, {a.threads} threads')
    for radius in (int(x) for x in a.radii.split(',')):
        m = lat.get_circular_mask(radius); k = lat.coords[m]
        cache = VolumeCache.from_volume_ht(vbar, radius, oversample=2, D=D)
        rs, cs = [], []
        for s in range(0, len(idx_real), 256):
            i = idx_real[s:s + 256]
            y = ds.get_batch(i).reshape(len(i), -1)[:, m]
            c = ctf_from_params(ctf[i], lat.freqs2d[m], D=D)
            yt = lat.translate_ht(y, tg[i], mask=m)
            rs.append(yt - c * cache.slices(Rg[i][None], k)[0]); cs.append(c)
        r, c = torch.cat(rs), torch.cat(cs)
        for n_iter in (int(x) for x in a.iters.split(',')):
            t0 = time.time()
            _, amp = variability_components(r, c, Rg[idx_real], k, D, a.K, n_iter=n_iter, seed=a.seed)
            dt = time.time() - t0
            amp = (amp - amp.mean(0)).numpy(); amp = amp @ np.linalg.svd(amp.T @ amp)[0]
            t1 = time.time(); spec = spectral_coordinates(torch.as_tensor(amp), a.zdim, seed=a.seed)[0].numpy(); dt_s = time.time() - t1
            scores = []
            for name, z in (('linear', amp[:, :a.zdim]), ('spectral', spec)):
                if a.kind == 'discrete':
                    pred = KMeans(len(vols), n_init=10, random_state=0).fit(z).labels_
                    scores.append(f'{name}: ARI of {len(vols)}-means {adjusted_rand_index(lab[real], pred):.3f}')
                else:
                    zc = z - z.mean(0); pc1 = zc @ np.linalg.svd(zc.T @ zc)[0][:, 0]
                    scores.append(f'{name}: |rho| of PC1 {abs(spearmanr(pc1, u[real]).statistic):.3f}')
            score = ', '.join(scores) + f' (embedding {dt_s:.1f} s)'
            print(f'band limit {radius:3d} px, {n_iter:3d} iterations: {dt:6.1f} s, {score}', flush=True)


if __name__ == '__main__':
    sys.exit(main())
