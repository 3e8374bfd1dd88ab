"""Short fixed-seed runs of every training mode on tiny simulated data, reduced to sha256 digests of their outputs.

Used by `tests/test_regression.py` (which compares them with `tests/goldens/regression.json`) and runnable on its own:
`python tests/regression_runs.py [--threads N] [--write]` prints the digests (and with `--write` stores them as the goldens).
A digest is of the arrays' bytes (not of the pickle files): the final epoch's rotations, translations, z and map voxels.

The runs execute under `PINNED` (set before torch is imported: the script re-executes itself with it): torch's own
kernels at AVX2 (`ATEN_CPU_CAPABILITY`), MKL in conditional numerical reproducibility mode at AVX2 (`MKL_CBWR`),
oneDNN capped at AVX2 and one thread. Without it the bits depend on the processor: on this project's AMD machine MKL's
native path and its AVX2 path already differ in two of the five modes, and an AVX-512 machine would differ again."""
import argparse, hashlib, json, os, sys, tempfile, time
from pathlib import Path
import numpy as np

GOLDENS = Path(__file__).parent / 'goldens' / 'regression.json'
PINNED = {'ATEN_CPU_CAPABILITY': 'avx2', 'MKL_CBWR': 'AVX2,STRICT', 'ONEDNN_MAX_CPU_ISA': 'AVX2', 'OMP_NUM_THREADS': '1',
          'MKL_NUM_THREADS': '1'}


def has_avx2()->bool:
    "Whether this processor can run the pinned (AVX2) code paths."
    try: return ' avx2 ' in ' ' + Path('/proc/cpuinfo').read_text().replace('\n', ' ') + ' '
    except OSError: return False

# one tiny schedule for all modes: 2 SGD epochs so that the refinement passes (with global re-search), the variability
# start of z, its re-estimate and the 3-D classification before the last epoch all run
TINY = dict(n_imgs_pretrain=64, n_imgs_pose_search=96, epochs_sgd=2, l_start=6, l_end=10, t_extent=2.0, t_n_grid=3,
            hps_search_batch=48, batch_size_hps=16, batch_size_sgd=16, batch_size_known_poses=16, dim=32, pe_dim=8,
            re_search_l_start=6, refine_levels=2, z_init_iters=4, classify_folds=2, device='cpu')

MODES = {  # name: the fields each mode sets over TINY ('poses' is filled in with the simulated set's true poses)
    'abinit': dict(mode='abinit'),
    'abinit_z2': dict(mode='abinit', zdim=2),
    'classes2': dict(mode='abinit', zdim=2, classify_k=2, classify_rounds=1),
    'fixed': dict(mode='fixed', poses=True),
    'refine': dict(mode='refine', poses=True),
}


def sha(a)->str: return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def simulate(d:Path)->Path:
    from drgnai_nb.simulate import SimConfig, simulate_to_dir
    simulate_to_dir(SimConfig(n_images=96, D=24, snr=1.0, seed=0, shift_px=1.0, heterogeneity='discrete', n_states=2), d,
                    progress=False)
    return d


def run_mode(name:str, data:Path, out:Path, threads:int=1)->dict:
    "Train mode `name` on the set in `data` into `out`; the digests of its last epoch's outputs."
    from drgnai_nb.train import TrainConfig, train
    from drgnai_nb.io import load_poses, load_pkl, read_mrc
    kw = dict(MODES[name])
    if kw.pop('poses', None): kw['poses'] = str(data / 'poses.pkl')
    cfg = TrainConfig.preset('cpu', particles=str(data / 'particles.mrcs'), ctf=str(data / 'ctf.pkl'), **{**TINY, **kw}, num_threads=threads)
    tr = train(cfg, out, progress=False)
    e = tr.epoch
    r, t = load_poses(out / f'pose.{e}.pkl')
    d = {'epoch': e, 'rot': sha(r), 'trans': sha(t), 'map': sha(read_mrc(out / f'reconstruct.{e}.mrc')[0]),
         'loss': [h['loss'] for h in tr.history]}
    if cfg.zdim: d['z'] = sha(load_pkl(out / f'z.{e}.pkl'))
    return d


def run_all(threads:int=1, modes=None)->dict:
    import torch
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = simulate(Path(tmp) / 'data')
        return {m: run_mode(m, data, Path(tmp) / m, threads) for m in (modes or MODES)}


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--write', action='store_true', help='store the digests as the goldens')
    ap.add_argument('--json', type=Path, default=None, help='also write the digests to this file')
    a = ap.parse_args()
    if any(os.environ.get(k) != v for k, v in PINNED.items()):  # pin the numerics before torch is imported
        os.execve(sys.executable, [sys.executable, __file__] + sys.argv[1:], {**os.environ, **PINNED})
    t0 = time.time()
    res = run_all(a.threads)
    print(json.dumps(res, indent=1)); print(f'{time.time() - t0:.1f} s', file=sys.stderr)
    if a.json: a.json.write_text(json.dumps(res))
    if a.write: GOLDENS.write_text(json.dumps(res, indent=1) + '\n')
