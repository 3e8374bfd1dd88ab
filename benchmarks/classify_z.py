"""What z should the last epoch start from after 3-D classification? Resumes a heterogeneous run's checkpoint on a
simulated set (`drgnai-nb simulate --heterogeneity discrete|continuous`), runs the refinement pass and the
classification passes of its last epoch once (`Trainer.classify_poses`, the run's `classify_k`, else 3), saves
them, then scores candidate starts against the ground truth: the adjusted Rand index of a 3-means split of z (junk
left out) on a discrete set, |Spearman ρ| of z's first principal component with the motion on a continuous one.

Candidates: the classes themselves; the class errors (`class_errors`); the class amplitudes (`Trainer.class_amplitudes`, where each particle lies
between the class maps) raw and embedded, at several band limits; a new variability fit at the class poses
(`classify_z='variability'`); and that fit, the class amplitudes and the class errors side by side
(`classify_z='both'`). The scores are of the start, before the
last epoch trains on it; `train ... --load` on a copy of the checkpoint measures a whole run.

    python benchmarks/classify_z.py RUNDIR SIMDIR OUTDIR                 # classify once (about 10 min at 1 thread), then score
    python benchmarks/classify_z.py RUNDIR SIMDIR OUTDIR --radii 6,8,12  # later calls reuse OUTDIR/classified.pt
"""
import argparse, os
from pathlib import Path
import numpy as np
import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('rundir'); p.add_argument('simdir'); p.add_argument('outdir')
    p.add_argument('--epoch', type=int, default=-1, help='checkpoint to resume (default: the one before the last epoch)')
    p.add_argument('--classes', type=int, default=0, help='classes (0: the run\'s classify_k, else 3)')
    p.add_argument('--radii', default='6,8,10,16', help='band limits of the class amplitudes to score, px')
    p.add_argument('--threads', type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import yaml
    from sklearn.cluster import KMeans
    from scipy.stats import spearmanr
    from drgnai_nb.io import load_pkl, load_checkpoint
    from drgnai_nb.metrics import adjusted_rand_index
    from drgnai_nb.train import Trainer, TrainConfig, class_fold_maps, class_errors, spectral_coordinates, latest_epoch
    run, sim, out = Path(a.rundir).resolve(), Path(a.simdir).resolve(), Path(a.outdir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig.from_dict(yaml.safe_load((run / 'config.yaml').read_text()))
    e = a.epoch if a.epoch >= 0 else latest_epoch(run) - 1
    k = a.classes or cfg.classify_k or 3
    os.chdir(run.parent)  # the run's config names its files relative to where it was started
    tr = Trainer(cfg, out, load=str(run / f'weights.{e}.pt'), progress=False)
    tr.epoch = e + 1
    lab = np.asarray(load_pkl(sim / 'labels.pkl')); good = lab >= 0
    discrete = len(np.unique(lab[good])) > 1
    u = None if discrete else np.asarray(load_pkl(sim / 'u.pkl'))

    def score(z, name):
        z = np.asarray(z, np.float64)
        if discrete:
            s = adjusted_rand_index(lab[good], KMeans(len(np.unique(lab[good])), n_init=10, random_state=0).fit_predict(z[good]))
        else:
            zz = z[good] - z[good].mean(0)
            s = abs(spearmanr(zz @ np.linalg.svd(zz, full_matrices=False)[2][0], u[good]).statistic)
        print(f'{name:60s} {"ARI" if discrete else "|rho|"} {s:.3f}', flush=True)

    saved = out / 'classified.pt'
    if not saved.exists():
        tr.refine_poses()
        rec = tr.classify_poses(k=k)
        torch.save({'pose_table': tr.poses.state_dict(),  # numpy arrays as tensors: the file loads without running code
                    'rec': {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in rec.items()}}, saved)
    st = load_checkpoint(saved)
    tr.poses.load_state_dict(st['pose_table']); rec = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in st['rec'].items()}
    if discrete: print(f'{"the classes":60s} ARI {adjusted_rand_index(lab[good], rec["classes"][good]):.3f}')
    score(tr.z_all(), 'z of the checkpoint')
    score(class_errors(rec['errors']), 'class errors (less their mean over the classes): raw')
    cls = torch.as_tensor(rec['classes']).masked_fill(torch.as_tensor(rec['junk']), -1)
    R, t = tr.poses.all()
    caches = class_fold_maps(tr.ds, R, t, tr.ctf, cls, k, tr.mask_radius(tr.epoch), folds=cfg.classify_folds)
    fit = torch.as_tensor(~rec['junk'])
    for r in [int(x) for x in a.radii.split(',')]:
        tr.cfg.z_init_radius = r
        amp = tr.class_amplitudes(caches, cfg.classify_folds)
        score(amp, f'class amplitudes, {r} px: raw')
        score(spectral_coordinates(amp, cfg.zdim, fit=fit, seed=cfg.seed)[0], f'class amplitudes, {r} px: spectral embedding')
    tr.cfg.z_init_radius = cfg.z_init_radius
    amp = tr.class_amplitudes(caches, cfg.classify_folds)  # at the run's band, as in a run
    z0 = tr.z_all().copy()
    tr.variability_init(align=True); score(tr.z_all(), "a new variability fit (classify_z='variability')")
    tr.conf.weight.data[:] = torch.as_tensor(z0)
    tr.variability_init(align=True, extra=[amp, class_errors(rec['errors'])]); score(tr.z_all(), "both side by side (classify_z='both')")
    tr.conf.weight.data[:] = torch.as_tensor(z0)
    tr.z_from_classes({**rec, 'amplitudes': amp}); score(tr.z_all(), "the class amplitudes alone (classify_z='classes')")


if __name__ == '__main__':
    main()
