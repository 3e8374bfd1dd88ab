"""Scale benchmark: throughput (pose search and SGD images/s), FLOPs per image, peak host (and device) memory and the
end-to-end time of a short ab initio run on a simulated set at box 128; and the streaming check, peak resident memory of
`train` (lazy reading) as the number of particles grows.

    python benchmarks/bench_scale.py speed                       # box 128, 512 images, --preset cpu, CPU
    python benchmarks/bench_scale.py speed --device cuda --preset gpu -n 20000 --amp auto   # a lent GPU
    python benchmarks/bench_scale.py speed --nproc 2             # the same run through torchrun (DDP, gloo on CPU)
    python benchmarks/bench_scale.py rss --sizes 10000 100000    # random float32 stacks at box 128 (6.5 GB at 100k)

`rss` writes random images, random poses and CTF parameters to --dir (check `df -h` first; deleted afterwards unless
--keep), then runs one epoch of mode 'fixed' with a tiny decoder in a fresh process per size and reports its peak
resident set (VmHWM: anonymous + file-backed pages, i.e. memory-mapped pages touched count) and the growth.
`--reader mmap` reads through the memory map instead of the default positioned reads (TrainConfig.reader).
"""
import argparse, json, math, os, resource, shutil, subprocess, sys, time
from pathlib import Path
import numpy as np

HERE = Path(__file__).resolve().parent


def _status_kb(key):
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(key + ':'): return int(line.split()[1])
    return None


def write_random_set(d, N, D, chunk=2000, seed=0):
    "Random float32 particles (N, D, D) plus random poses and plausible CTF parameters, streamed to disk."
    import mrcfile, torch
    from drgnai_nb.io import save_poses, save_ctf
    from drgnai_nb.so3 import random_rotations
    d = Path(d); d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with mrcfile.new_mmap(d / 'particles.mrcs', shape=(N, D, D), mrc_mode=2, overwrite=True) as m:
        for s in range(0, N, chunk):
            m.data[s:s + chunk] = rng.standard_normal((min(chunk, N - s), D, D), dtype=np.float32)
        m.voxel_size = 3.0
    save_poses(d / 'poses.pkl', random_rotations(N, torch.Generator().manual_seed(seed)).numpy(),
               (rng.uniform(-0.02, 0.02, (N, 2))).astype(np.float32))
    df = rng.uniform(10000, 25000, N)
    ctf = np.stack([np.full(N, D), np.full(N, 3.0), df, df + 100, np.full(N, 30.0), np.full(N, 300.0), np.full(N, 2.7),
                    np.full(N, 0.1), np.zeros(N)], 1).astype(np.float32)
    save_ctf(d / 'ctf.pkl', ctf)
    return d


def rss_child(a):
    "One epoch of mode 'fixed' with a tiny decoder over the whole set (lazy), in this fresh process; prints JSON."
    import torch
    from drgnai_nb.train import TrainConfig, Trainer
    torch.set_num_threads(a.threads)
    d = Path(a.data)
    cfg = TrainConfig.preset('cpu', particles=str(d / 'particles.mrcs'), ctf=str(d / 'ctf.pkl'), poses=str(d / 'poses.pkl'),
                             mode='fixed', dim=32, pe_dim=8, layers=1, epochs_sgd=1, batch_size_known_poses=a.batch,
                             lazy=True, reader=a.reader, device='cpu', checkpoint_every=1,
                             # a 4-px loss radius: the decoder costs nothing, the epoch is reading + preprocessing
                             output_mask='frequency_marching', l_start_fm=a.radius, n_frequencies_per_epoch=0)
    import threading
    peaks, phase, stop = {}, ['init'], threading.Event()
    def sample():  # the largest anonymous and file-backed resident sets of each phase
        while not stop.is_set():
            a, f = _status_kb('RssAnon') or 0, _status_kb('RssFile') or 0
            pk = peaks.setdefault(phase[0], [0, 0]); pk[0] = max(pk[0], a / 1024); pk[1] = max(pk[1], f / 1024)
            time.sleep(0.02)
    th = threading.Thread(target=sample, daemon=True); th.start()
    base = _status_kb('VmRSS')
    t0 = time.time()
    tr = Trainer(cfg, d / 'run', overwrite=True, progress=False)
    after_init = _status_kb('VmRSS')
    phase[0] = 'epoch'; tr.run_epoch(0); tr.epoch = 0
    phase[0] = 'checkpoint'; tr.save(0)
    stop.set(); th.join()
    out = {'N': tr.N, 'D': tr.D, 'seconds': time.time() - t0, 'images_per_s': tr.history[-1]['images_per_s'],
           'rss_after_import_mb': base / 1024, 'rss_after_init_mb': after_init / 1024,
           'peak_rss_mb': _status_kb('VmHWM') / 1024, 'ru_maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           'rss_end_mb': _status_kb('VmRSS') / 1024, 'rss_file_end_mb': (_status_kb('RssFile') or 0) / 1024,
           'peak_anon_file_mb_by_phase': peaks}
    print('RESULT ' + json.dumps(out))


def rss(a):
    res = []
    for N in a.sizes:
        d = Path(a.dir) / f'rss_N{N}_D{a.D}'
        t0 = time.time()
        write_random_set(d, N, a.D)
        tw = time.time() - t0
        try:
            p = subprocess.run([sys.executable, __file__, '_rss_child', '--data', str(d), '--threads', str(a.threads),
                                '--batch', str(a.batch), '--radius', str(a.radius), '--reader', a.reader], capture_output=True, text=True, check=True)
            r = json.loads([l for l in p.stdout.splitlines() if l.startswith('RESULT ')][-1][7:])
        finally:
            if not a.keep: shutil.rmtree(d, ignore_errors=True)
        r['write_s'] = tw; r['reader'] = a.reader
        res.append(r); print(json.dumps(r), flush=True)
    if len(res) > 1:
        g = res[-1]['peak_rss_mb'] / res[0]['peak_rss_mb'] - 1
        print(f"peak RSS: " + ', '.join(f"N={r['N']}: {r['peak_rss_mb']:.0f} MB" for r in res) +
              f"; growth {100 * g:+.1f} % from N={res[0]['N']} to N={res[-1]['N']} (target < 10 %)")


def speed(a):
    import torch
    sys.path.insert(0, str(HERE))
    from bench_train import flops_per_image, matmul_rate
    from drgnai_nb.simulate import SimConfig, simulate_to_dir
    from drgnai_nb.train import TrainConfig, parse_set, compare_to_truth, format_truth_table
    from drgnai_nb.distributed import make_trainer
    out = Path(a.out); data = out / f'data_D{a.D}_n{a.n}_snr{a.snr}'
    t_sim = time.time()
    if not (data / 'particles.mrcs').exists():
        simulate_to_dir(SimConfig(n_images=a.n, D=a.D, snr=a.snr, seed=0, shift_px=3.2, Apix=3.0), data, progress=False)
    t_sim = time.time() - t_sim
    base = {'particles': str(data / 'particles.mrcs'),
            'ctf': str(data / 'ctf.pkl'), 'device': a.device, 'n_imgs_pretrain': a.n, 'n_imgs_pose_search': a.n,
            'epochs_sgd': a.epochs_sgd, 'refine_every': 0}
    if a.amp: base['amp'] = a.amp  # TrainConfig.amp (default 'auto': off on the CPU)
    cfg = TrainConfig.preset(a.preset, **parse_set(base, a.set))
    if a.nproc > 1:  # the same run through torchrun: DistributedDataParallel over a.nproc processes
        import yaml
        out.mkdir(parents=True, exist_ok=True)
        (out / 'cfg.yaml').write_text(yaml.safe_dump(cfg.to_dict()))
        t0 = time.time()
        subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', str(a.nproc),
                        '-m', 'drgnai_nb.distributed', str(out / 'cfg.yaml'), str(out / 'run'), '--overwrite'], check=True,
                       env={**os.environ, 'OMP_NUM_THREADS': str(max(1, (a.threads or os.cpu_count()) // a.nproc))})
        wall = time.time() - t0
        from drgnai_nb.io import load_checkpoint
        st = load_checkpoint(out / 'run' / f'weights.{cfg.epochs_sgd}.pt')
        hist = st['history']
        print(json.dumps({'nproc': a.nproc, 'wall_s': wall, 'history': hist}, indent=2))
        return
    torch.set_num_threads(a.threads or min(os.cpu_count() or 1, 32))
    dev = torch.device('cuda' if (a.device == 'auto' and torch.cuda.is_available()) or a.device.startswith('cuda') else 'cpu')
    rate = matmul_rate(dev)
    t0 = time.time()
    tr = make_trainer(cfg, out / 'run', overwrite=True, progress=False)
    if tr.device.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    tr.fit()
    if tr.device.type == 'cuda': torch.cuda.synchronize()
    wall = time.time() - t0
    hps = [h for h in tr.history if h['phase'] == 'hps']; sgd = [h for h in tr.history if h['phase'] == 'sgd']
    fl = flops_per_image(tr)
    res = {'N': tr.N, 'D': tr.D, 'device': str(tr.device), 'threads': torch.get_num_threads(), 'preset': a.preset,
           'dim': cfg.dim, 'layers': cfg.layers, 'simulate_s': t_sim, 'train_wall_s': wall,
           'hps_images_per_s': float(np.mean([h['images_per_s'] for h in hps])) if hps else None,
           'sgd_images_per_s': float(np.mean([h['images_per_s'] for h in sgd])) if sgd else None,
           'gflop_per_image_sgd': fl['sgd'] / 1e9, 'gflop_per_image_hps': fl['hps_total'] / 1e9, 'matmul_gflops': rate,
           'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if tr.device.type == 'cuda': res['peak_gpu_gb'] = torch.cuda.max_memory_allocated() / 2**30
    # the default 45,000-particle schedule at these rates (pretrain 10k + pose search 500k images + 100 SGD epochs)
    if res['hps_images_per_s'] and res['sgd_images_per_s']:
        res['default_schedule_45k_h'] = (10000 / res['sgd_images_per_s'] + 500000 / res['hps_images_per_s'] +
                                         100 * 45000 / res['sgd_images_per_s']) / 3600
    if not a.no_truth: res['vs_truth'] = compare_to_truth(out / 'run', data)
    print(json.dumps(res, indent=2, default=float))
    print(f"\nbox {tr.D}, N={tr.N}, {tr.device}: pose search {res['hps_images_per_s'] or 0:.1f} images/s, SGD "
          f"{res['sgd_images_per_s'] or 0:.1f} images/s, {res['gflop_per_image_sgd']:.3f} GFLOP/image (SGD), "
          f"{res['gflop_per_image_hps']:.3f} GFLOP/image (pose search), peak RSS {res['peak_rss_gb']:.2f} GB"
          + (f", peak GPU {res['peak_gpu_gb']:.2f} GB" if 'peak_gpu_gb' in res else '') + f", train {wall:.0f} s")
    if 'vs_truth' in res: print(format_truth_table(res['vs_truth']))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    s = sub.add_parser('speed', help='throughput, memory and end-to-end time of a short ab initio run')
    s.add_argument('-n', type=int, default=512); s.add_argument('-D', type=int, default=128)
    s.add_argument('--snr', type=float, default=0.1); s.add_argument('--preset', default='cpu')
    s.add_argument('--device', default='cpu'); s.add_argument('--amp', default=None, help="'auto', 'off', 'bf16', 'fp16'")
    s.add_argument('--epochs-sgd', type=int, default=1); s.add_argument('--threads', type=int, default=None)
    s.add_argument('--nproc', type=int, default=1, help='processes (torchrun + DDP)')
    s.add_argument('--out', default='bench_scale_out'); s.add_argument('--no-truth', action='store_true')
    s.add_argument('--set', nargs='*', default=[], help='training config overrides KEY=VALUE')
    r = sub.add_parser('rss', help='peak resident memory of train as N grows (lazy reading)')
    r.add_argument('--sizes', type=int, nargs='+', default=[10000, 100000]); r.add_argument('-D', type=int, default=128)
    r.add_argument('--dir', default='/tmp/drgnai_bench_rss'); r.add_argument('--keep', action='store_true')
    r.add_argument('--threads', type=int, default=1); r.add_argument('--batch', type=int, default=64)
    r.add_argument('--reader', choices=['pread', 'mmap'], default='pread', help="TrainConfig.reader: positioned reads (default) or the memory map")
    r.add_argument('--radius', type=int, default=4, help='loss radius, px (small: the epoch measures reading, not the decoder)')
    c = sub.add_parser('_rss_child'); c.add_argument('--data'); c.add_argument('--threads', type=int, default=1)
    c.add_argument('--batch', type=int, default=64); c.add_argument('--radius', type=int, default=4)
    c.add_argument('--reader', default='pread')
    a = p.parse_args(argv)
    {'speed': speed, 'rss': rss, '_rss_child': rss_child}[a.cmd](a)


if __name__ == '__main__':
    main()
