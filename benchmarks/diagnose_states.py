"""Where does a heterogeneous ab initio run lose its states? Diagnoses a trained run on a simulated set
(`drgnai-nb simulate --heterogeneity discrete|continuous`) against the ground truth, in four steps:

1. **Clusters and poses**: the adjusted Rand index of k-means on the final z (k = the number of states, junk left out),
   its confusion table, and the pose error of the particles it puts in the right and in the wrong state.
2. **z from the poses alone**: the run's own variability step (`Trainer.variability_init`, the z start and re-estimate of
   the `cpu` preset) applied to the run's poses, to the true poses carried into the run's frame, and to the run's poses
   with the true ones put back only where the run's are off by more than X degrees. This measures how much of the
   shortfall each band of pose error costs.
3. **Search failure or model limit?** For particles in bands of pose error, the fit against the run's conformation-group
   maps (the maps its refinement passes use) after local refinement from the run's pose and from the true pose. If the
   run's pose fits better, a better search cannot help: the learned maps prefer the wrong pose.
4. **Evidence in the images**: the share of particles whose best-fitting TRUE state map (at the true pose, and after
   local refinement against each state map) is their own state: what perfect maps would allow.
5. **Do the run's poses hold the states?** The particles grouped by the TRUTH (the true states; on a continuous set,
   `--windows` equal bins of the true motion coordinate), each group backprojected into cross-validated maps
   (`class_fold_maps`) once at the run's poses and once at the true poses; each particle then goes to the group map it
   fits best (band `z_init_radius`). The maps are made from the poses they are scored with, so each set is judged in its
   own frame; the gap between the two is what the run's pose errors cost z, whatever the decoder learned. On a continuous
   set this step also prints how the run's rotation errors (the error rotation in the molecule's frame, as a rotation
   vector) follow the motion: a rank correlation near 1 means a systematic turn that grows along the motion.
6. **The images' own limit** (continuous sets made with the built-in molecule): each of `--max-particles` particles'
   most likely place along the motion (41 steps), scored against the simulator's exact noise-free images at its true
   pose, shift and CTF, within the band of step 5 and over the whole image.

    python benchmarks/diagnose_states.py RUNDIR SIMDIR                 # all four
    python benchmarks/diagnose_states.py RUNDIR SIMDIR --bands 6 --max-particles 300
    python benchmarks/diagnose_states.py RUNDIR SIMDIR --windows 8               # step 5's bins of a continuous motion
"""
import argparse, os, time
from pathlib import Path
import numpy as np
import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('rundir'); p.add_argument('simdir')
    p.add_argument('--bands', default='3,6', help='step 2: put the true poses back where the run is off by more than these, degrees')
    p.add_argument('--max-particles', type=int, default=200, help='steps 3 and 4: particles per error band / in all')
    p.add_argument('--groups', type=int, default=0, help='step 3: conformation groups (0: the run\'s refine_z_groups)')
    p.add_argument('--windows', type=int, default=8, help='step 5, continuous sets: bins of the true motion coordinate')
    p.add_argument('--threads', type=int, default=os.cpu_count()); p.add_argument('--seed', type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    import yaml
    from sklearn.cluster import KMeans
    from scipy.stats import spearmanr
    from drgnai_nb.train import TrainConfig, Trainer, conformation_groups, cache_from_model, class_fold_maps
    from drgnai_nb.hps import VolumeCache, local_refine
    from drgnai_nb.forward import volume_to_ht
    from drgnai_nb.io import load_pkl, load_poses, read_mrc
    from drgnai_nb.metrics import adjusted_rand_index, cluster_accuracy, pose_error, rotation_angle
    from drgnai_nb.analysis import _resolve
    run, sim = Path(a.rundir), Path(a.simdir)
    d = yaml.safe_load(open(run / 'config.yaml'))
    for f in ('particles', 'ctf', 'poses', 'ind', 'datadir'):  # paths as the run wrote them: as given, else from the run directory
        if d.get(f): d[f] = str(_resolve(d[f], run))
    cfg = TrainConfig.from_dict(d)
    if cfg.zdim == 0 or cfg.mode == 'fixed': raise SystemExit(f'{run}: needs a heterogeneous run that estimated its poses (zdim {cfg.zdim}, mode {cfg.mode})')
    tr = Trainer(cfg, run, load='latest', progress=False)
    sel = tr.src.indices
    lab = np.asarray(load_pkl(sim / 'labels.pkl'))[sel]; good = lab >= 0
    u = np.asarray(load_pkl(sim / 'u.pkl'))[sel]
    n_states = len(np.unique(lab[good])); discrete = n_states > 1
    Rt, tt = load_poses(sim / 'poses.pkl'); Rt = np.asarray(Rt, np.float64)[sel]; tt = np.asarray(tt, np.float64)[sel] * tr.D
    Rr, trr = (x.double() for x in tr.current_poses())
    g = torch.Generator().manual_seed(a.seed)

    def score(z):  # ARI of k-means (k = n_states) or |Spearman rho| of PC1 with u, junk left out
        z = np.asarray(z)[good]
        if discrete:
            pred = KMeans(n_states, n_init=10, random_state=a.seed).fit(z).labels_
            return adjusted_rand_index(lab[good], pred), pred
        zc = z - z.mean(0); pc1 = zc @ np.linalg.svd(zc.T @ zc)[0][:, 0]
        return abs(spearmanr(pc1, u[good]).statistic), None
    what = 'ARI' if discrete else '|rho| of PC1'

    # 1. clusters and poses
    pe = pose_error(Rr.numpy()[good], Rt[good], trr.numpy()[good], tt[good], try_mirror=True)
    err = np.full(tr.N, np.nan); err[good] = pe.rot
    s0, pred = score(tr.z_all())
    print(f'run {run} (epoch {tr.epoch}): {what} of the final z {s0:.3f}; pose error median {np.median(pe.rot):.2f}°, '
          f'90th percentile {np.percentile(pe.rot, 90):.2f}°, mirror {pe.mirror}')
    if discrete:
        C = np.zeros((n_states, n_states), int)
        np.add.at(C, (np.searchsorted(np.unique(lab[good]), lab[good]), pred), 1)
        print(f'confusion (rows: true states, columns: clusters):\n{C}')
        mapping = cluster_accuracy(lab[good], pred, return_mapping=True)[1]  # cluster -> its matched true state
        right = np.array([mapping.get(q) for q in pred]) == lab[good]
        print(f'right state {right.mean():.3f}: pose error median {np.median(pe.rot[right]):.2f}° (right) / '
              f'{np.median(pe.rot[~right]):.2f}° (wrong); off by > 10°: {np.mean(pe.rot[right] > 10):.3f} / {np.mean(pe.rot[~right] > 10):.3f}')
    # the true poses in the run's frame: rotations through the alignment, shifts through the fitted 3-D shift
    flip = np.diag([1.0, 1.0, -1.0])
    Rt_run = Rt @ pe.align.T
    if pe.mirror: Rt_run = flip @ Rt_run @ flip
    tt_run = tt + Rt[:, :2, :] @ pe.shift
    if pe.mirror: print('(the run has the other hand: steps 2 and 3 carry the true poses over mirrored)')

    # 2. z from the poses alone (the run's variability step)
    z_run = torch.as_tensor(tr.z_all()).clone()
    def var_z(R, t):
        tr.poses.set(torch.arange(tr.N), torch.as_tensor(R).float(), torch.as_tensor(t).float())
        with torch.no_grad(): tr.conf.weight[:] = z_run.to(tr.conf.weight)
        tr.variability_init(); return score(tr.z_all())[0]
    t0 = time.time()
    print(f'step 2, {what} of z from the variability step: run poses {var_z(Rr, trr):.3f}; '
          f'true poses {var_z(Rt_run, tt_run):.3f}', end='', flush=True)
    for b in (float(x) for x in a.bands.split(',') if x):
        off = torch.as_tensor(good & (np.nan_to_num(err) > b))
        R = torch.where(off[:, None, None], torch.as_tensor(Rt_run), Rr); t = torch.where(off[:, None], torch.as_tensor(tt_run), trr)
        print(f'; true poses for the {int(off.sum())} off by > {b:g}°: {var_z(R, t):.3f}', end='', flush=True)
    print(f' ({time.time() - t0:.0f} s)')
    tr.poses.set(torch.arange(tr.N), Rr.float(), trr.float())
    with torch.no_grad(): tr.conf.weight[:] = z_run.to(tr.conf.weight)

    # 3. search failure or model limit: fits against the run's group maps
    D, full = tr.D, torch.ones(tr.lat.D ** 2, dtype=torch.bool, device=tr.device)
    kw = dict(radius=D // 2, delta_deg=cfg.refine_delta_deg, shift_step=cfg.refine_shift_px, n_levels=cfg.refine_levels, lattice=tr.lat)
    tr.model.eval()
    with torch.no_grad():
        cen, assign = conformation_groups(z_run, a.groups or cfg.refine_z_groups, seed=cfg.seed)
        caches = [cache_from_model(tr.model, D, D // 2, cen[j:j + 1].to(tr.device), oversample=2) for j in range(len(cen))]
        edges = [0, 3, 6, 10, 30, 180]
        for lo, hi in zip(edges[:-1], edges[1:]):
            band = np.flatnonzero(good & (np.nan_to_num(err) > lo) & (np.nan_to_num(err) <= hi))
            if len(band) == 0: continue
            band = np.sort(band[torch.randperm(len(band), generator=g)[:a.max_particles].numpy()])
            e_run, e_true, moved = [], [], []
            for j in np.unique(assign.numpy()[band]):
                s = torch.as_tensor(band[assign.numpy()[band] == j])
                y, ctf = tr.ds.get_batch(s.numpy()).to(tr.device), tr._ctf(s.to(tr.device), full)
                e_run.append(local_refine(y, ctf, caches[j], Rr[s].float(), trr[s].float(), **kw)[2])
                R2, _, e2 = local_refine(y, ctf, caches[j], torch.as_tensor(Rt_run[s.numpy()]).float(), torch.as_tensor(tt_run[s.numpy()]).float(), **kw)
                e_true.append(e2); moved.append(torch.as_tensor(rotation_angle(R2.double().cpu().numpy(), Rt_run[s.numpy()])))
            e_run, e_true, moved = torch.cat(e_run).cpu(), torch.cat(e_true).cpu(), torch.cat(moved)
            print(f'step 3, pose error ({lo}°, {hi}°], {len(band)} particles: the refined true pose fits the group maps better for '
                  f'{float((e_true < e_run).float().mean()):.2f} of them (median fit gain of the run pose {float((e_true - e_run).median()):.2f}); '
                  f'refinement moves the true pose {float(moved.median()):.2f}°')

        # 4. evidence with the true state maps (discrete sets)
        vols = sorted(sim.glob('vol_*.mrc'))
        if discrete and len(vols) == n_states:
            tcache = [VolumeCache.from_volume_ht(volume_to_ht(torch.as_tensor(read_mrc(f)[0]), pad=2).to(tr.device) / float(tr.ds.norm[1]),
                                                 D // 2, oversample=2, D=D) for f in vols]
            pick = np.flatnonzero(good); pick = np.sort(pick[torch.randperm(len(pick), generator=g)[:a.max_particles].numpy()])
            m = tr.lat.get_circular_mask(D // 2); k = tr.lat.coords[m]
            E0, E1 = [], []
            for s0_ in range(0, len(pick), 128):
                s = torch.as_tensor(pick[s0_:s0_ + 128])
                y, ctf = tr.ds.get_batch(s.numpy()).to(tr.device), tr._ctf(s.to(tr.device), full)
                Rs, ts = torch.as_tensor(Rt[s.numpy()]).float().to(tr.device), torch.as_tensor(tt[s.numpy()]).float().to(tr.device)
                yy = tr.lat.translate_ht(y.reshape(len(s), -1)[:, m], ts, mask=m)
                E0.append(torch.stack([((yy - ctf[:, m] * c.slices(Rs[None], k)[0]) ** 2).sum(1) for c in tcache], 1))
                E1.append(torch.stack([local_refine(y, ctf, c, Rs, ts, **kw)[2] for c in tcache], 1))
            L = torch.as_tensor(np.searchsorted(np.unique(lab[good]), lab[pick]))
            acc0, acc1 = (float((torch.cat(E).argmin(1).cpu() == L).float().mean()) for E in (E0, E1))
            print(f'step 4, {len(pick)} particles: the true state map that fits best is their own for {acc0:.3f} at the true pose, '
                  f'{acc1:.3f} after local refinement against each map')

        # 5. do the run's poses hold the states? groups of the truth backprojected at the run's poses and at the true poses
        if discrete: grp = np.where(good, np.searchsorted(np.unique(lab[good]), lab), -1)
        else: grp = np.where(good, np.minimum((np.nan_to_num(u) * a.windows).astype(int), a.windows - 1), -1)
        n_grp = int(grp.max()) + 1
        grp_t = torch.as_tensor(grp).long()
        mz = tr.lat.get_circular_mask(tr._z_radius()); kz = tr.lat.coords[mz]
        fold = torch.arange(tr.N) % cfg.classify_folds
        for name, (R_, t_) in (('run', (Rr.float(), trr.float())), ('true', (torch.as_tensor(Rt).float(), torch.as_tensor(tt).float()))):
            R_, t_ = R_.to(tr.device), t_.to(tr.device)
            maps = class_fold_maps(tr.ds, R_, t_, tr.ctf, grp_t, n_grp, D // 2, folds=cfg.classify_folds)
            have = sorted({c for c, _ in maps})
            if len(have) < 2:
                print(f'step 5, {name} poses: fewer than 2 of the {n_grp} groups have {cfg.classify_folds} folds of 5 particles; skipped'); continue
            E = torch.full((tr.N, n_grp), float('inf'))
            for s0_ in range(0, tr.N, 256):
                s = torch.arange(s0_, min(tr.N, s0_ + 256)); sd = s.to(tr.device)
                y = tr.lat.translate_ht(tr.ds.get_batch(s.numpy()).to(tr.device).reshape(len(s), -1)[:, mz], t_[sd], mask=mz)
                ctf = tr._ctf(sd, mz)
                for f in range(cfg.classify_folds):
                    rows = (fold[s] == f).nonzero()[:, 0]; rows_d = rows.to(tr.device)
                    for c in have:
                        if (c, f) in maps:
                            E[s[rows], c] = ((y[rows_d] - ctf[rows_d] * maps[c, f].slices(R_[sd][rows_d][None], kz)[0]) ** 2).sum(1).float().cpu()
            best = E.argmin(1).numpy()
            right = float(np.mean(best[good] == grp[good]))
            if discrete: fig = f'ARI {adjusted_rand_index(grp[good], best[good]):.3f}'
            else: fig = f'|rho| with the motion {abs(spearmanr(best[good], u[good]).statistic):.3f}'
            print(f'step 5, {n_grp} {"true states" if discrete else "bins of the true motion"} backprojected at the {name} poses '
                  f'(band {tr._z_radius()} px): best-fitting group is their own for {right:.3f}; {fig}', flush=True)
        if not discrete:
            from scipy.spatial.transform import Rotation
            rv = Rotation.from_matrix(np.swapaxes(Rt[good], 1, 2) @ pe.rot_aligned).as_rotvec(degrees=True)
            rs = [spearmanr(rv[:, i], u[good]).statistic for i in range(3)]
            lo, hi = u[good] < np.quantile(u[good], 0.2), u[good] > np.quantile(u[good], 0.8)
            print('step 5, the run\'s rotation errors along the motion (molecule frame): rank correlation with the motion of the x, y, z '
                  'components ' + ', '.join(f'{r:+.2f}' for r in rs) + f'; mean error rotation in the lowest / highest fifth of the motion '
                  + ' / '.join('(' + ', '.join(f'{v:+.1f}' for v in rv[b_].mean(0)) + ')°' for b_ in (lo, hi)), flush=True)

        # 6. the images' own limit: maximum likelihood along the motion against the simulator's exact images
        scfg = yaml.safe_load(open(sim / 'sim_config.yaml')) if (sim / 'sim_config.yaml').exists() else {}
        if not discrete and scfg.get('heterogeneity') == 'continuous' and scfg.get('volume') is None and scfg.get('D') == D:
            from drgnai_nb.simulate import builtin_molecule, blob_volume, blob_slices, form_images
            from drgnai_nb.forward import slice_volume
            from drgnai_nb.lattice import Lattice
            lat0 = Lattice(D + 1)
            mol = builtin_molecule(D); ax = torch.tensor(scfg['hinge_axis'], dtype=torch.float64); mol.axis = ax / ax.norm()
            static = volume_to_ht(blob_volume(mol, D, 0.0, part='static').double(), 4 if D <= 128 else 2)  # as `simulate` renders it
            arm = mol.subset(mol.moving)
            pick = np.flatnonzero(good); pick = np.sort(pick[torch.randperm(len(pick), generator=g)[:a.max_particles].numpy()])
            raw = torch.as_tensor(np.asarray(read_mrc(sim / 'particles.mrcs')[0])[np.asarray(sel)[pick]]).double()
            ctf0 = torch.as_tensor(np.asarray(load_pkl(sim / 'ctf.pkl'), np.float64)[np.asarray(sel)[pick]])
            Rp, tp = torch.as_tensor(Rt[pick]), torch.as_tensor(tt[pick])
            grid_u = torch.linspace(0, 1, 41, dtype=torch.float64)
            fr = torch.fft.fftfreq(D, dtype=torch.float64) * D; kr = (fr[:, None] ** 2 + fr[None, :] ** 2).sqrt()
            bands = (tr._z_radius(), D // 2)
            E = torch.zeros(len(bands), len(pick), len(grid_u), dtype=torch.float64)
            h0 = slice_volume(static, Rp, lat0.coords.double())
            for j, uj in enumerate(grid_u.tolist()):
                h = h0 + blob_slices(arm.centres_at(torch.full((len(pick),), uj, dtype=torch.float64)) * D, arm.sigmas * D, arm.amps, Rp, lat0.coords)
                F = torch.fft.fft2(raw - form_images(h, ctf0, tp, lat0)).abs() ** 2  # image − clean
                for b_, r in enumerate(bands): E[b_, :, j] = F[:, kr <= r].sum(1)
            rho_b = [abs(spearmanr(grid_u[E[b_].argmin(1)].numpy(), u[pick]).statistic) for b_ in range(len(bands))]
            print(f'step 6, {len(pick)} particles: the images\' own limit, their most likely place along the motion (41 steps) against '
                  f'the simulator\'s exact images at the true poses: |rho| with the motion {rho_b[0]:.3f} (band {bands[0]} px), '
                  f'{rho_b[1]:.3f} (band {bands[1]} px)', flush=True)


if __name__ == '__main__':
    main()
