"""Heterogeneity without being told K: three simulated sets that differ in molecule, heterogeneity and junk, each trained
with the same default command and no K (`drgnai-nb train RUN --zdim 4`), then `drgnai-nb analyze RUN --truth SIM`;
prints one table of what `analyze` found against the truth.

    A  the built-in bead molecule, 3 discrete states + 20 % junk, box 64, SNR 0.1 (built-in simulator)
    B  1HZH (../shared/models/1hzh.pdb), one Fab arm at 2 positions 40° apart + 10 % junk, box 64, 4 Å/px, SNR 0.1
    C  1HZH, the same Fab arm turning continuously through 40° + 10 % junk, box 64, 4 Å/px, SNR 0.1

    python benchmarks/het_without_k.py OUT                       # all three: about 45 min each at 1 thread (2 cores: run 2 at once)
    python benchmarks/het_without_k.py OUT --sets B --threads 2
    python benchmarks/het_without_k.py OUT --table-only          # print the table from OUT/*/run/analyze.E/summary.json

Columns: states true / found (`states.count_states`), adjusted Rand index of the states found on the truly non-junk
particles (and of k-means with the true K, for reference), junk recall / precision of analyze's fit rule, each state's
map FSC-0.5 (px) at the states found beside the map backprojected from that state's particles at their true poses,
|Spearman rho| of PC1 with the motion (continuous set), and CryoBench's per-image FSC-AUC (area over 0-0.5 cycles/px,
0.5 is perfect) beside the same score for true poses and labels.
"""
import argparse, json, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HZH = str((ROOT / '..' / 'shared' / 'models' / '1hzh.pdb').resolve())
FAB = '//H/1-220;//L'
SETS = {
    'A': ('bead molecule, 3 states + 20% junk', ['-n', '2000', '--heterogeneity', 'discrete', '--n-states', '3', '--junk-fraction', '0.2']),
    'B': ('1HZH, 2 arm positions + 10% junk', ['--model', HZH, '-n', '2000', '-D', '64', '--Apix', '4', '--snr', '0.1', '--moving', FAB,
                                              '--motion-states', '2', '--junk-fraction', '0.1', '--seed', '1']),
    'C': ('1HZH, continuous arm motion + 10% junk', ['--model', HZH, '-n', '2000', '-D', '64', '--Apix', '4', '--snr', '0.1',
                                                    '--moving', FAB, '--junk-fraction', '0.1']),
}


def _override(args:list, flag:str, value)->list:
    "The simulate arguments with `flag value` replaced (or added)."
    if value is None: return args
    a = list(args)
    if flag in a: a[a.index(flag) + 1] = str(value)
    else: a += [flag, str(value)]
    return a


def run_set(out:Path, name:str, threads:int, n=None, D=None, train_set=()):
    from drgnai_nb.cli import main
    d, run = out / name / 'sim', out / name / 'run'
    t = {}
    if not (d / 'particles.mrcs').exists():
        assert main(['--threads', str(threads), 'simulate', str(d), '--no-progress'] + _override(_override(SETS[name][1], '-n', n), '-D', D)) == 0
    if not (run / 'config.yaml').exists() or 'done' not in (run / 'run.log').read_text():
        t0 = time.time()
        load = ['--load', 'latest'] if (run / 'config.yaml').exists() else []
        assert main(['--threads', str(threads), 'train', str(run), '--particles', str(d / 'particles.mrcs'), '--ctf', str(d / 'ctf.pkl'),
                     '--zdim', '4', '--no-progress'] + load + (['--set', *train_set] if train_set else [])) == 0
        t['train_s'] = time.time() - t0
    t0 = time.time()
    assert main(['--threads', str(threads), 'analyze', str(run), '--truth', str(d), '--no-progress']) == 0
    t['analyze_s'] = time.time() - t0
    (out / name / 'times.json').write_text(json.dumps(t))


def row(out:Path, name:str)->str:
    runs = sorted((out / name / 'run').glob('analyze.*/summary.json'))
    if not runs: return f'| {name} | {SETS[name][0]} | (not run) |'
    s = json.loads(runs[-1].read_text()); tm = s.get('truth', {})
    f = lambda v: '-' if v is None else f'{v:.3f}' if isinstance(v, float) else str(v)
    found = tm.get('state_found_fsc05_px') or {}
    bound = tm.get('state_fsc05_px_true_poses_labels') or {}
    maps = ', '.join(f'{float(found[k]):.2f}/{float(bound.get(k, float("nan"))):.2f}' for k in sorted(found)) if found else '-'
    return (f"| {name} | {SETS[name][0]} | {tm.get('n_states_true')} / {tm.get('n_states_found')} | {f(tm.get('ari_states_found_nonjunk'))} "
            f"({f(tm.get('ari_kmeans_nonjunk'))}) | {f(tm.get('junk_recall'))} / {f(tm.get('junk_precision'))} | {maps} | "
            f"{f(abs(tm['spearman_pc1_u']) if 'spearman_pc1_u' in tm else None)} | {f(tm.get('fsc_auc_per_image'))} / "
            f"{f(tm.get('fsc_auc_per_image_true_poses_labels'))} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('outdir'); p.add_argument('--sets', default='A,B,C'); p.add_argument('--threads', type=int, default=1)
    p.add_argument('--table-only', action='store_true')
    p.add_argument('-n', '--n-images', type=int, default=None, help='images per set (default 2000; small values are for testing the script)')
    p.add_argument('-D', type=int, default=None, help='box (default 64)')
    p.add_argument('--train-set', nargs='+', default=[], metavar='KEY=VALUE', help='extra `train --set` fields (testing the script on a short schedule)')
    a = p.parse_args(argv)
    out = Path(a.outdir); names = [x.strip() for x in a.sets.split(',') if x.strip()]
    bad = [n for n in names if n not in SETS]
    if bad: p.error(f'unknown set(s) {bad}; expected some of {list(SETS)}')
    if any(n in ('B', 'C') for n in names) and not Path(HZH).is_file() and not a.table_only:
        p.error(f'sets B and C need the atomic model {HZH}')
    if not a.table_only:
        for n in names: run_set(out, n, a.threads, a.n_images, a.D, a.train_set)
    print('| set | data | states true / found | ARI found (k-means, true K) | junk recall / precision | '
          'state FSC-0.5 px: found / true poses | abs rho PC1 | per-image FSC-AUC / true poses+labels |')
    print('|---|---|---|---|---|---|---|---|')
    for n in names: print(row(out, n))
    return 0


if __name__ == '__main__':
    sys.exit(main())
