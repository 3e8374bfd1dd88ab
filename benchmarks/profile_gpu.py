"""Where the time of a training step goes: the SGD phase and the pose-search phase at box 128 with the default model,
timed over whole epochs (images/s) and profiled (torch.profiler: the operators with the most device and host time),
with variants of the settings that change speed (mixed precision, decoding chunk bound, batch size).

    python benchmarks/profile_gpu.py                     # CUDA if present, box 128, 2,048 images
    python benchmarks/profile_gpu.py -n 1024 --device cpu -D 64 --variants base
"""
import argparse, json, os, time
from pathlib import Path
import torch


def epoch_rate(tr, epoch, reps=2):
    "images/s of `reps` whole epochs of the phase of `epoch` (the first one is a warm-up), and the device's peak memory."
    sync = (lambda: torch.cuda.synchronize()) if tr.device.type == 'cuda' else (lambda: None)
    tr.epoch = epoch; tr.run_epoch(epoch)  # warm-up: allocator, kernels' first launch
    if tr.device.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    sync(); t = time.time()
    for _ in range(reps): tr.run_epoch(epoch)
    sync()
    peak = torch.cuda.max_memory_allocated() / 2**30 if tr.device.type == 'cuda' else float('nan')
    return reps * tr.N / (time.time() - t), peak


def profile(tr, epoch, rows=18):
    from torch.profiler import profile as prof, ProfilerActivity
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if tr.device.type == 'cuda' else [])
    with prof(activities=acts) as p:
        tr.run_epoch(epoch)
        if tr.device.type == 'cuda': torch.cuda.synchronize()
    key = 'self_cuda_time_total' if tr.device.type == 'cuda' else 'self_cpu_time_total'
    print(p.key_averages().table(sort_by=key, row_limit=rows), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-n', type=int, default=2048); p.add_argument('-D', type=int, default=128)
    p.add_argument('--device', default='auto'); p.add_argument('--out', default='/tmp/drgnai_profile')
    p.add_argument('--variants', nargs='*', default=['base', 'amp_off', 'chunk_big', 'batch128', 'batch128_chunk_big'])
    p.add_argument('--profile', action='store_true', help='also print the profiler tables of the base settings')
    p.add_argument('--set', nargs='*', default=[], help='config overrides KEY=VALUE for every variant')
    a = p.parse_args(argv)
    from drgnai_nb.simulate import SimConfig, simulate_to_dir
    from drgnai_nb.train import TrainConfig, Trainer, parse_set
    torch.set_num_threads(min(os.cpu_count() or 1, 16))
    data = Path(a.out) / f'data_D{a.D}_n{a.n}'
    if not (data / 'particles.mrcs').exists():
        simulate_to_dir(SimConfig(n_images=a.n, D=a.D, snr=0.1, seed=0, shift_px=3.2, Apix=3.0), data, progress=False)
    variants = {'base': {}, 'amp_off': {'amp': 'off'}, 'chunk_big': {'decode_max_elems': 2**30},
                'batch128': {'batch_size_sgd': 128, 'hps_search_batch': 256, 'batch_size_hps': 32},
                'batch128_chunk_big': {'batch_size_sgd': 128, 'hps_search_batch': 256, 'batch_size_hps': 32, 'decode_max_elems': 2**30},
                # torch.compile of the decoder's network (fuses the elementwise work around the matmuls); compiled in the warm-up epoch
                'chunk_big_compile': {'decode_max_elems': 2**30, '_compile': True},
                'batch128_chunk_big_compile': {'batch_size_sgd': 128, 'hps_search_batch': 256, 'batch_size_hps': 32,
                                               'decode_max_elems': 2**30, '_compile': True}}
    res = {}
    for name in a.variants:
        base = dict(particles=str(data / 'particles.mrcs'), ctf=str(data / 'ctf.pkl'), device=a.device,
                    n_imgs_pretrain=0, n_imgs_pose_search=a.n, epochs_sgd=3, refine_every=0, lazy=False)
        v = {k: x for k, x in variants[name].items() if not k.startswith('_')}
        cfg = TrainConfig.preset('gpu', **parse_set({**base, **v}, a.set))
        tr = Trainer(cfg, Path(a.out) / f'run_{name}', overwrite=True, progress=False)
        tr.pretrained = True
        if variants[name].get('_compile'): tr.model._net = torch.compile(tr.model._net, dynamic=True)
        t0 = time.time()
        hps, hps_mem = epoch_rate(tr, 0, reps=1)
        sgd, sgd_mem = epoch_rate(tr, tr.n_hps_epochs, reps=2)
        res[name] = {'hps_images_per_s': hps, 'sgd_images_per_s': sgd, 'peak_gpu_gb_hps': hps_mem, 'peak_gpu_gb_sgd': sgd_mem,
                     'amp_dtype': str(tr.amp_dtype), 'wall_s_with_warmups': time.time() - t0, **variants[name]}
        print(name, json.dumps(res[name]), flush=True)
        if a.profile and name == 'base':
            print('--- SGD epoch'); profile(tr, tr.n_hps_epochs)
            print('--- pose-search epoch'); profile(tr, 0)
        del tr
        if torch.cuda.is_available(): torch.cuda.empty_cache()
    print(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
