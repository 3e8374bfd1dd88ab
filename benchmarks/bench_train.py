"""Benchmark of DRGN-AI training on simulated data: speed (pose search and SGD images/s, FLOPs per image, fraction of
the machine's matmul rate, peak memory) and accuracy (pose errors and map resolution against the ground truth, in the
form of the DRGN-AI paper's table), with the same data trained on the true poses (`fixed`) as the accuracy ceiling.

    python benchmarks/bench_train.py                 # box 64, 2,000 images, SNR 0.1, --preset cpu (about 10 min on 2 cores)
    python benchmarks/bench_train.py --speed-only    # the reference's settings, 1 pose-search + 1 SGD epoch
    python benchmarks/bench_train.py -D 128 -n 5000 --preset gpu --device cuda
"""
import argparse, json, math, os, resource, sys, time
from pathlib import Path
import numpy as np
import torch


def matmul_rate(device, dim=128, rows=65536, reps=20):
    "Achieved GFLOP/s of an (rows x dim) @ (dim x dim) fp32 matmul: the decoder's hidden layers."
    a = torch.randn(rows, dim, device=device); w = torch.randn(dim, dim, device=device)
    for _ in range(3): a @ w
    if device.type == 'cuda': torch.cuda.synchronize()
    t = time.time()
    for _ in range(reps): a @ w
    if device.type == 'cuda': torch.cuda.synchronize()
    return 2 * rows * dim * dim * reps / (time.time() - t) / 1e9


def flops_per_image(tr):
    "Analytic FLOPs per image: SGD step (forward + backward = 3x forward) and pose-search epoch (cache + scoring + steps)."
    from drgnai_nb.models import flops_per_image as fpi, flops_per_point
    from drgnai_nb.grids import grid_sizes
    cfg, D, lat = tr.cfg, tr.D, tr.lat
    n_mask = int(lat.get_circular_mask(D // 2).sum())
    sgd = 3 * fpi(tr.model, n_mask)
    hc = cfg.hps
    ls = hc.band_limits(D)
    L = int(math.ceil(ls[-1])) + 1
    cache_pts = (4 / 3) * math.pi * (ls[-1] + 1.5) ** 3  # points inside the cached sphere
    cache = cache_pts / 2 * flops_per_point(tr.model) / cfg.hps_search_batch  # one evaluation per pair +-k
    n0 = int(lat.get_circular_mask(ls[0]).sum())
    s2, psi = grid_sizes(hc.base_order)
    T0 = hc.t_n_grid ** 2 if hc.t_extent > 0 else 1
    score = 2 * T0 * n0 * s2 * psi  # base level: (T x N) @ (N x M)
    for l in ls[1:]:
        n = int(lat.get_circular_mask(l).sum())
        score += 2 * hc.n_kept * 9 * 8 * n
    return {'sgd': sgd, 'hps_search': cache + score, 'hps_total': cache + score + sgd}


def pose_floor(data, fixed_run=None, n=600, radius=None):
    """The pose accuracy this data allows: local refinement (the trainer's own `local_refine`) started from the TRUE
    poses, scored against the true map and against the map learned with the true poses (`fixed`). No method that
    scores poses against a map of that quality can expect smaller median errors than these."""
    from drgnai_nb.io import read_mrc, load_poses, load_ctf, load_checkpoint
    from drgnai_nb.data import ImageSource, ParticleDataset
    from drgnai_nb.forward import volume_to_ht
    from drgnai_nb.hps import VolumeCache, local_refine
    from drgnai_nb.lattice import Lattice
    from drgnai_nb.ctf import ctf_from_params
    from drgnai_nb.metrics import pose_error
    ds = ParticleDataset(ImageSource(str(data / 'particles.mrcs'), lazy=False))
    idx, y = next(iter(ds.batches(n, shuffle=False)))
    D = ds.D; radius = radius or D // 2
    rg, tg = load_poses(data / 'poses.pkl'); rg, tg = rg[:len(idx)], tg[:len(idx)]
    lat = Lattice(D + 1)
    c = ctf_from_params(torch.as_tensor(load_ctf(data / 'ctf.pkl')[:len(idx)]).float(), lat.freqs2d, D=D)
    caches = {'true map': VolumeCache.from_volume_ht(volume_to_ht(torch.as_tensor(read_mrc(data / 'vol.mrc')[0]), pad=2) / ds.norm[1],
                                                    radius, oversample=2, D=D)}
    if fixed_run is not None:
        from drgnai_nb.rundir import latest_epoch, run_file, read_checkpoint, model_from_state
        m = model_from_state(read_checkpoint(run_file(fixed_run, 'weights', latest_epoch(fixed_run))))  # a fixed-pose run: homogeneous
        caches['fixed-pose map'] = VolumeCache.from_model(m, D, radius, oversample=2)
    out = {}
    for name, cache in caches.items():
        R, t = torch.as_tensor(rg).float(), torch.as_tensor(tg).float() * D
        for _ in range(2):  # two passes: the greedy search settles at the score's minimum near the truth
            R, t, _e = local_refine(y, c, cache, R, t, radius=radius, delta_deg=1.0, shift_step=0.25, n_levels=5, lattice=lat)
        pe = pose_error(R.numpy(), rg, t.numpy() / D, tg, D=D, try_mirror=False)
        out[name] = {'out_of_plane_median_deg': float(np.median(pe.out_of_plane)), 'out_of_plane_mean_deg': float(np.mean(pe.out_of_plane)),
                     'in_plane_median_deg': float(np.median(pe.in_plane)), 'in_plane_mean_deg': float(np.mean(pe.in_plane)),
                     'trans_median_px': float(np.median(pe.trans)), 'trans_mean_px': float(np.mean(pe.trans)), 'n': len(idx)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-n', type=int, default=2000); p.add_argument('-D', type=int, default=64)
    p.add_argument('--snr', type=float, default=0.1); p.add_argument('--preset', default='cpu')
    p.add_argument('--device', default='auto'); p.add_argument('--out', default='bench_out')
    p.add_argument('--speed-only', action='store_true', help="the reference's settings for 1 pose-search and 1 SGD epoch")
    p.add_argument('--no-fixed', action='store_true', help='skip the fixed-pose ceiling run')
    p.add_argument('--set', nargs='*', default=[], help='training config overrides KEY=VALUE')
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--states', type=int, default=1, help='discrete conformational states to simulate (>1: heterogeneous)')
    p.add_argument('--zdim', type=int, default=None, help='conformation size (default: 4 when --states > 1, else 0)')
    p.add_argument('--no-floor', action='store_true', help='skip the pose-accuracy floor (refinement from the true poses)')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads or min(os.cpu_count() or 1, 32))
    from drgnai_nb.simulate import SimConfig, simulate_to_dir
    from drgnai_nb.train import TrainConfig, Trainer, parse_set, compare_to_truth, format_truth_table
    out = Path(a.out); data = out / (f'data_D{a.D}_n{a.n}_snr{a.snr}' + (f'_states{a.states}' if a.states > 1 else ''))
    het = dict(heterogeneity='discrete', n_states=a.states) if a.states > 1 else {}
    zdim = a.zdim if a.zdim is not None else (4 if a.states > 1 else 0)
    if not (data / 'particles.mrcs').exists():
        simulate_to_dir(SimConfig(n_images=a.n, D=a.D, snr=a.snr, seed=0, shift_px=3.2, defocus=(1.0, 2.5), Apix=3.0, **het),
                        data, progress=False)
    base = {'particles': str(data / 'particles.mrcs'), 'ctf': str(data / 'ctf.pkl'), 'device': a.device, 'zdim': zdim}
    if a.speed_only:  # cryoDRGN abinit's CPU settings of the issue: 3x128, pe 32, order 1, l 12->16 / 3 levels, 4 kept, +-8 px
        base.update(dim=128, pe_dim=32, base_order=1, n_levels=3, l_start=12, l_end=16, n_kept=4, t_extent=8.0, lr=1e-3,
                    n_imgs_pretrain=0, n_imgs_pose_search=a.n, epochs_sgd=1, refine_every=0)
    cfg = TrainConfig.preset(a.preset, **parse_set(base, a.set))
    rate = matmul_rate(torch.device('cuda' if (a.device == 'auto' and torch.cuda.is_available()) or a.device.startswith('cuda') else 'cpu'))
    t0 = time.time()
    tr = Trainer(cfg, out / 'run_abinit', overwrite=True, progress=False)
    if tr.device.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    tr.fit()
    wall = time.time() - t0
    hps = [h for h in tr.history if h['phase'] == 'hps']; sgd = [h for h in tr.history if h['phase'] == 'sgd']
    fl = flops_per_image(tr)
    res = {'config': {k: getattr(cfg, k) for k in ('preset', 'dim', 'layers', 'pe_dim', 'base_order', 'n_levels', 'l_start', 'l_end',
                                                   'n_kept', 't_extent', 't_n_grid', 'batch_size_hps', 'hps_search_batch', 'batch_size_sgd')},
           'N': tr.N, 'D': tr.D, 'device': str(tr.device), 'threads': torch.get_num_threads(), 'wall_s': wall,
           'hps_images_per_s': float(np.mean([h['images_per_s'] for h in hps])) if hps else None,
           'sgd_images_per_s': float(np.mean([h['images_per_s'] for h in sgd])) if sgd else None,
           'flops_per_image_sgd': fl['sgd'], 'flops_per_image_hps': fl['hps_total'], 'matmul_gflops': rate,
           'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if tr.device.type == 'cuda': res['peak_gpu_gb'] = torch.cuda.max_memory_allocated() / 2**30
    if res['sgd_images_per_s']: res['sgd_fraction_of_matmul_rate'] = res['sgd_images_per_s'] * fl['sgd'] / 1e9 / rate
    if res['hps_images_per_s']: res['hps_fraction_of_matmul_rate'] = res['hps_images_per_s'] * fl['hps_total'] / 1e9 / rate
    res['abinit'] = compare_to_truth(out / 'run_abinit', data)
    if not a.no_fixed and not a.speed_only:
        fc = TrainConfig.from_dict({**cfg.to_dict(), 'mode': 'fixed', 'poses': str(data / 'poses.pkl')})
        Trainer(fc, out / 'run_fixed', overwrite=True, progress=False).fit()
        res['fixed'] = compare_to_truth(out / 'run_fixed', data)
    if not a.speed_only and not a.no_floor and a.states == 1:
        res['floor'] = pose_floor(data, None if a.no_fixed else out / 'run_fixed')
    print(json.dumps(res, indent=2, default=float))
    print(f"\nspeed: pose search {res['hps_images_per_s'] or 0:.1f} images/s, SGD {res['sgd_images_per_s'] or 0:.1f} images/s, "
          f"{res['flops_per_image_sgd'] / 1e9:.2f} GFLOP/image (SGD), {res['flops_per_image_hps'] / 1e9:.3f} GFLOP/image (pose search), "
          f"matmul rate {rate:.0f} GFLOP/s, peak RSS {res['peak_rss_gb']:.2f} GB, wall {wall:.0f} s")
    print('\nab initio vs ground truth:'); print(format_truth_table(res['abinit']))
    if 'fixed' in res: print('fixed (true) poses, the ceiling:'); print(format_truth_table(res['fixed']))
    for name, f in res.get('floor', {}).items():
        print(f"pose floor against the {name} (local refinement started at the true poses, {f['n']} images): "
              f"out-of-plane {f['out_of_plane_median_deg']:.2f}° ({f['out_of_plane_mean_deg']:.2f}), in-plane "
              f"{f['in_plane_median_deg']:.2f}° ({f['in_plane_mean_deg']:.2f}), translation {f['trans_median_px']:.3f} px")
    (out / 'bench.json').write_text(json.dumps(res, indent=2, default=float))


if __name__ == '__main__':
    main()
