"""Realistic benchmark sets from an atomic model, and the DRGN-AI paper's pose table on them.

Makes a set from PDB 1HZH (intact IgG1 b12; `../shared/models/1hzh.pdb`) with preferred orientations, SNR 0.05,
defocus 1-3 µm at box 128 (2 Å/px), and its Fourier crop to box 64 (4 Å/px); then, for each box asked for, trains
ab initio (`--preset`), reads the poses at the end of the pose-search phase (HPS only), trains with the true poses
(`mode=fixed`, the ceiling), and measures the pose floor (local refinement from the true poses against the true map
and the fixed-pose map, as `bench_train.py`). Each training runs in its own process, so its wall time and peak
memory (RSS) are its own. Prints one table per box and writes OUT/bench_atomic.json.

    python benchmarks/bench_atomic.py --simulate-only                 # the two sets (about a minute)
    python benchmarks/bench_atomic.py --boxes 64 --threads 1          # box 64: ab initio, HPS only, true poses, floor
    python benchmarks/bench_atomic.py --boxes 128 --preset cpu --set n_imgs_pose_search=15000
    python benchmarks/bench_atomic.py --moving '//H/1-220;//L' --simulate-only --out bench_igg1d   # a continuous arm motion
"""
import argparse, json, math, os, resource, shutil, sys, time
from pathlib import Path
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def make_sets(a, out:Path)->dict:
    "Simulate the box-128 set and Fourier-crop it to each smaller box asked for; {D: folder}."
    from drgnai_nb.atomic import AtomicSimConfig, simulate_atomic_to_dir
    from drgnai_nb.data import ImageSource, downsample_stack
    from drgnai_nb.io import read_mrc, write_mrc, load_ctf, save_ctf, write_star, load_poses
    from drgnai_nb.values import CTFParams
    from drgnai_nb.fft import htn_center, ihtn_center
    D0 = max(a.boxes + [a.D])
    big = out / f'data_D{D0}'
    sets = {D0: big}
    if not (big / 'particles.mrcs').exists():
        t = time.time()
        cfg = AtomicSimConfig(models=[a.model], n_images=a.n, D=D0, Apix=a.Apix, snr=a.snr, defocus=tuple(a.defocus),
                              preferred_views=a.preferred_views, view_spread=a.view_spread, uniform_fraction=a.uniform_fraction,
                              moving=a.moving, motion_angle=a.motion_angle, junk_fraction=a.junk_fraction, seed=a.seed,
                              bfactor=a.bfactor, noise_color=a.noise_color)
        simulate_atomic_to_dir(cfg, big, overwrite=True, progress=False)
        print(f'simulated {a.n} images at D={D0}, {a.Apix} Å/px in {time.time() - t:.0f} s -> {big}', flush=True)
    for d in sorted(set(a.boxes) - {D0}):
        small = out / f'data_D{d}'
        sets[d] = small
        if (small / 'particles.mrcs').exists(): continue
        small.mkdir(parents=True, exist_ok=True)
        stack = downsample_stack(ImageSource(str(big / 'particles.mrcs')), small / 'particles.mrcs', d, progress=False)
        ctf = CTFParams.load(big / "ctf.pkl").at_box(d).array  # the pixel size grows by D0 / d
        save_ctf(small / 'ctf.pkl', ctf)
        for f in ('poses.pkl', 'labels.pkl', 'u.pkl', 'sim_config.yaml'): shutil.copy(big / f, small / f)  # shifts are box fractions
        rot, trans = load_poses(big / 'poses.pkl')
        write_star(small / 'particles.star', [(str(stack), i) for i in range(len(rot))], ctf, rot, trans)
        k = D0 // 2 - d // 2
        for v in sorted(big.glob('vol*.mrc')):  # the ground truth cropped the same way (voxel values preserved)
            h = htn_center(torch.as_tensor(read_mrc(v)[0]).double())[k:k + d, k:k + d, k:k + d]
            write_mrc(small / v.name, (ihtn_center(h) * (d / D0) ** 3).float().numpy(), Apix=a.Apix * D0 / d)
        print(f'Fourier-cropped to D={d} ({a.Apix * D0 / d:g} Å/px) -> {small}', flush=True)
    return sets


def _train_child(cfg_dict, outdir, threads, result_path):
    "One training in its own process: its wall time and peak RSS are written next to the run."
    torch.set_num_threads(threads)
    from drgnai_nb.train import TrainConfig, Trainer
    t = time.time()
    tr = Trainer(TrainConfig.from_dict(cfg_dict), outdir, overwrite=True, progress=False)
    tr.fit()
    hps = [h for h in tr.history if h['phase'] == 'hps']; sgd = [h for h in tr.history if h['phase'] != 'hps']  # 'sgd', or 'fixed' with the true poses
    Path(result_path).write_text(json.dumps({
        'wall_s': time.time() - t, 'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
        'n_hps_epochs': tr.n_hps_epochs, 'n_epochs': tr.n_epochs,
        'hps_s': float(sum(h['seconds'] for h in hps)), 'sgd_s': float(sum(h['seconds'] for h in sgd)),
        'hps_images_per_s': float(np.mean([h['images_per_s'] for h in hps])) if hps else None,
        'sgd_images_per_s': float(np.mean([h['images_per_s'] for h in sgd])) if sgd else None}))


def train(cfg, outdir:Path, threads:int)->dict:
    import multiprocessing as mp
    res = outdir.parent / f'{outdir.name}.resources.json'
    p = mp.get_context('spawn').Process(target=_train_child, args=(cfg.to_dict(), str(outdir), threads, str(res)))
    p.start(); p.join()
    if p.exitcode != 0: raise RuntimeError(f'training in {outdir} failed (exit code {p.exitcode}); see {outdir}/run.log')
    return json.loads(res.read_text())


def row(name, d, extra=''):
    f = lambda k, fmt='.2f': ('-' if d.get(k) is None else format(d[k], fmt))
    return (f"| {name} | {f('out_of_plane_median_deg')} ({f('out_of_plane_mean_deg')}) | {f('in_plane_median_deg')} "
            f"({f('in_plane_mean_deg')}) | {f('trans_median_px', '.3f')} ({f('trans_mean_px', '.3f')}) | {f('fsc05_px')} | "
            f"{'-' if d.get('mirror') is None else ('mirrored' if d['mirror'] else 'right')} | {extra} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default=str(ROOT / '..' / 'shared' / 'models' / '1hzh.pdb'), help='atomic model (PDB/mmCIF)')
    p.add_argument('-n', type=int, default=5000, help='images')
    p.add_argument('-D', type=int, default=128, help='box of the simulated set, pixels')
    p.add_argument('--Apix', type=float, default=2.0, help='its pixel size, Å')
    p.add_argument('--boxes', type=int, nargs='+', default=[64], help='boxes to benchmark (smaller ones are Fourier crops of -D)')
    p.add_argument('--snr', type=float, default=0.05); p.add_argument('--defocus', type=float, nargs=2, default=[1.0, 3.0])
    p.add_argument('--preferred-views', type=int, default=3); p.add_argument('--view-spread', type=float, default=15.0)
    p.add_argument('--uniform-fraction', type=float, default=0.1); p.add_argument('--bfactor', type=float, default=50.0)
    p.add_argument('--noise-color', type=float, default=0.0); p.add_argument('--junk-fraction', type=float, default=0.0)
    p.add_argument('--moving', default=None, help="gemmi selection that moves (a continuous set; no training then)")
    p.add_argument('--motion-angle', type=float, default=40.0)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--preset', default='cpu'); p.add_argument('--set', nargs='*', default=[], help='training overrides KEY=VALUE')
    p.add_argument('--device', default='auto'); p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default='bench_atomic'); p.add_argument('--simulate-only', action='store_true')
    p.add_argument('--no-fixed', action='store_true'); p.add_argument('--no-floor', action='store_true')
    p.add_argument('--no-abinit', action='store_true', help='only the fixed-pose run and the floor')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not Path(a.model).is_file(): sys.exit(f'{a.model}: atomic model not found')
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    sets = make_sets(a, out)
    if a.simulate_only or a.moving: return
    from drgnai_nb.train import TrainConfig, parse_set, compare_to_truth
    from bench_train import pose_floor
    results = json.loads((out / 'bench_atomic.json').read_text()) if (out / 'bench_atomic.json').exists() else {}
    for D in a.boxes:
        data = sets[D]; r = results.setdefault(str(D), {})
        base = {'particles': str(data / 'particles.mrcs'), 'ctf': str(data / 'ctf.pkl'), 'device': a.device, 'zdim': 0}
        cfg = TrainConfig.preset(a.preset, **parse_set(base, a.set))
        r['config'] = {k: getattr(cfg, k) for k in ('preset', 'dim', 'layers', 'pe_dim', 'base_order', 'n_levels', 'l_start', 'l_end',
                                                     'n_kept', 't_extent', 'n_imgs_pose_search', 'epochs_sgd')}
        if not a.no_abinit:
            run = out / f'run_abinit_D{D}'
            r['abinit_resources'] = train(cfg, run, a.threads)
            r['abinit'] = compare_to_truth(run, data)
            e_hps = r['abinit_resources']['n_hps_epochs'] - 1
            if e_hps >= 0: r['hps_only'] = compare_to_truth(run, data, epoch=e_hps)
            print(f'D={D} ab initio: {json.dumps(r["abinit"])}', flush=True)
        if not a.no_fixed:
            fc = TrainConfig.from_dict({**cfg.to_dict(), 'mode': 'fixed', 'poses': str(data / 'poses.pkl')})
            r['fixed_resources'] = train(fc, out / f'run_fixed_D{D}', a.threads)
            r['fixed'] = compare_to_truth(out / f'run_fixed_D{D}', data)
        if not a.no_floor:
            t = time.time()
            r['floor'] = pose_floor(data, None if a.no_fixed else out / f'run_fixed_D{D}')
            r['floor_s'] = time.time() - t
        (out / 'bench_atomic.json').write_text(json.dumps(results, indent=2, default=float))
    for D in a.boxes:
        r = results[str(D)]
        print(f'\nD={D}, {a.n} images, SNR {a.snr}, defocus {a.defocus[0]:g}-{a.defocus[1]:g} µm, {a.preferred_views} preferred views '
              f'(median, mean in brackets)')
        print('| method | out-of-plane (°) | in-plane (°) | translation (px) | FSC=0.5 (px) | hand | time, peak RSS |\n|---|---|---|---|---|---|---|')
        res = lambda k: (f"{r[k]['wall_s'] / 60:.1f} min, {r[k]['peak_rss_gb']:.2f} GB" if k in r else '')
        if 'abinit' in r: print(row('ab initio', r['abinit'], res('abinit_resources')))
        if 'hps_only' in r: print(row(f"HPS only (epoch {r['hps_only']['epoch']})", r['hps_only'], 'end of the pose search'))
        if 'fixed' in r: print(row('true poses (fixed)', r['fixed'], res('fixed_resources')))
        for name, f in r.get('floor', {}).items(): print(row(f'floor vs {name}', f, f"{r.get('floor_s', 0):.0f} s, {f['n']} images"))


if __name__ == '__main__':
    main()
