"""The explorer at 10^6 particles in a real browser: JupyterLab + headless Chromium (Playwright, the driver of
tests/browser.py), timed as a user feels it.

    python benchmarks/bench_explore.py [-n 1000000] [--work DIR] [--lassos 3]

Prints (1) the time from running the explorer cell to an interactive plot (all N points drawn by WebGL, the lasso
wired), (2) for each lasso drawn with the mouse, the time from releasing the button to the updated info line, table
and gallery in the page, and Python's own share of it (finding the particles inside the outline, redrawing the
table and the gallery), (3) the same for a box. Goals: < 5 s and < 1 s.

The particles: a tiny run is trained (300 simulated images, 24 px, a few seconds), then widened to N particles for
the explorer: z drawn from three Gaussian states and a curved continuous one, poses random, and each particle mapped
onto one of the run's 300 images (image i mod 300), so the gallery reads real images. The table is built by
`load_table` (PCA, k-means with 20 clusters, the ||z|| junk rule) before the timing starts, as `analyze` would have.
Needs chromium (apt-get install -y chromium); one CPU thread for torch and the kernel's BLAS."""
import argparse, dataclasses, json, sys, tempfile, time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / 'tests'))


def tiny_run(d:Path)->Path:
    "A 300-image heterogeneous run (zdim 2, known poses): its directory."
    import torch
    from drgnai_nb.simulate import SimConfig, simulate_to_dir
    from drgnai_nb.train import TrainConfig, train
    if (d / 'run' / 'weights.0.pt').exists(): return d / 'run'
    torch.set_num_threads(1)
    tiny = dict(n_imgs_pretrain=64, n_imgs_pose_search=64, epochs_sgd=1, l_start=6, l_end=8, t_extent=2.0, t_n_grid=3,
                hps_search_batch=32, batch_size_hps=16, batch_size_sgd=16, batch_size_known_poses=16, dim=32, pe_dim=8)
    simulate_to_dir(SimConfig(n_images=300, D=24, snr=1.0, seed=1, shift_px=1.0, heterogeneity='discrete', n_states=3), d / 'sim', progress=False)
    train(TrainConfig.preset('cpu', particles=str(d / 'sim/particles.mrcs'), ctf=str(d / 'sim/ctf.pkl'), zdim=2, mode='fixed',
                             poses=str(d / 'sim/poses.pkl'), **tiny), d / 'run', progress=False)
    return d / 'run'


def million_run(rundir, n:int=1_000_000, seed:int=0):
    "The run widened to n particles (see the module note); returns (run, table, cluster column)."
    from drgnai_nb.analysis import load_run
    from drgnai_nb.explore import load_table
    from drgnai_nb.so3 import random_rotations
    import torch
    torch.set_num_threads(1)
    run = load_run(rundir)
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 4, n)
    centres = np.array([[-1.5, 0.0], [1.2, 1.0], [0.8, -1.3]])
    z = np.empty((n, 2), np.float32)
    d = k < 3
    z[d] = centres[k[d]] + 0.35 * rng.standard_normal((d.sum(), 2))
    s = rng.uniform(-1, 1, (~d).sum())
    z[~d] = np.c_[2.5 * s, 1.5 * s ** 2 - 0.5] + 0.15 * rng.standard_normal(((~d).sum(), 2))
    rot = random_rotations(n, torch.Generator().manual_seed(seed)).numpy()
    big = dataclasses.replace(run, rot=rot, trans=rng.uniform(-0.02, 0.02, (n, 2)).astype(np.float32), z=z,
                              ind=(np.arange(n) % run.N).astype(np.int64), _cache={})
    class Widened(type(run)):
        "Particle i shows image i mod N of the small run (a stack may not select one image twice, so not through `ind`)."
        def images(self, sel): return run.images(np.asarray(sel, np.int64) % run.N)
    big.__class__ = Widened
    table, ccol = load_table(big)
    return big, table, ccol


SETUP = '''import sys, time
sys.path.insert(0, {bench!r})
from bench_explore import million_run
from drgnai_nb.explore import LatentExplorer
run, table, ccol = million_run({rundir!r}, {n})
print('ready', len(table))'''
EXPLORE = '''ex = LatentExplorer(run, table, ccol, outdir={out!r})
ex'''


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('-n', type=int, default=1_000_000, help='particles')
    ap.add_argument('--work', type=Path, default=None, help='work folder (default: a temporary one)')
    ap.add_argument('--lassos', type=int, default=3, help='lassos to time')
    ap.add_argument('--shot', type=Path, default=None, help='save a screenshot of the explorer here')
    a = ap.parse_args(argv)
    from browser import CHROMIUM, launch, LabServer, ConsoleLog, kernel_eval
    if CHROMIUM is None: sys.exit('chromium not installed (apt-get install -y chromium)')
    import nbformat
    work = a.work or Path(tempfile.mkdtemp(prefix='bench_explore_'))
    work.mkdir(parents=True, exist_ok=True)
    t = time.time(); rundir = tiny_run(work)
    print(f'tiny run: {time.time() - t:.1f} s')
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SETUP.format(bench=str(HERE), rundir=str(rundir), n=a.n)),
                                         nbformat.v4.new_code_cell(EXPLORE.format(out=str(work / 'selections')))],
                                  metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})
    nbformat.write(nb, work / 'bench.ipynb')
    res = {'n': a.n}
    with LabServer(work, work / 'lab') as lab, launch() as b:
        page = b.new_page(viewport={'width': 1400, 'height': 1300})
        page.set_default_timeout(120_000)
        log = ConsoleLog(page)
        page.goto(lab.url('bench.ipynb'))
        page.wait_for_function('''() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
            return k && k.status === 'idle' && w.content.widgets.length === 2; }''')
        run_cell = '''(i) => { const app = window.jupyterapp, w = app.shell.currentWidget;
                          w.content.activeCellIndex = i; return app.commands.execute('notebook:run-cell'); }'''
        t = time.time()
        page.evaluate(run_cell, 0)
        page.wait_for_function('''() => [...document.querySelectorAll('.jp-OutputArea-output')].some(o => o.innerText.startsWith('ready'))''',
                               timeout=600_000, polling=500)
        print(f'setup cell ({a.n} particles: table, PCA, k-means): {time.time() - t:.1f} s')
        time.sleep(2)
        t = time.time()
        page.evaluate(run_cell, 1)
        page.wait_for_function(f'''() => {{ const e = document.querySelector('.drgnai-explorer [data-points]');
                                            return e && e.dataset.points === '{a.n}'; }}''', polling='raf', timeout=120_000)
        res['cell_to_interactive_s'] = time.time() - t
        draw_ms = page.evaluate("document.querySelector('.drgnai-explorer [data-points]').dataset.drawMs")
        print(f'explorer cell -> interactive plot ({a.n} points): {res["cell_to_interactive_s"]:.2f} s (plotly.react {draw_ms} ms)')
        kc = lab.kernel_client()
        gd = page.locator('.drgnai-explorer .js-plotly-plot').first
        gd.scroll_into_view_if_needed(); time.sleep(1)
        box = page.evaluate('''() => { const gd = document.querySelector('.drgnai-explorer .js-plotly-plot'), xa = gd._fullLayout.xaxis,
                                       ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
                                       return [r.left + xa._offset, r.top + ya._offset, xa._length, ya._length]; }''')
        state = '''() => { const i = [...document.querySelectorAll('.drgnai-explorer .widget-html-content')].find(e => e.innerText.includes('particles selected'));
                           const g = document.querySelector('.drgnai-explorer img'); const p = document.querySelector('.drgnai-explorer [data-points]');
                           const e = [...document.querySelectorAll('.drgnai-explorer .widget-html-content')].find(e => e.innerText.includes('unavailable'));
                           return {info: i ? i.innerText : '', img: g ? g.src.length + ':' + g.src.slice(-40) : '', sel: p.dataset.selected,
                                   err: e ? e.innerText : ''}; }'''
        lat = []
        shapes = [(0.25, 0.3, 0.3, 0.3), (0.5, 0.2, 0.35, 0.5), (0.15, 0.5, 0.5, 0.35), (0.4, 0.4, 0.2, 0.2)]
        for k in range(a.lassos + 1):
            fx, fy, fw, fh = shapes[k % len(shapes)]
            x0, y0, w, h = box[0] + fx * box[2], box[1] + fy * box[3], fw * box[2], fh * box[3]
            pts = [(x0, y0), (x0 + w, y0 + 0.1 * h), (x0 + w * 1.1, y0 + h * 0.6), (x0 + 0.6 * w, y0 + h), (x0 - 0.1 * w, y0 + 0.7 * h), (x0, y0)]
            before = page.evaluate(state)
            if k == a.lassos:  # the last one: a box
                page.mouse.move(box[0] + box[2] / 2, box[1] + box[3] / 2)
                page.locator('.drgnai-explorer .modebar-btn[data-val="select"]').first.click()
                pts = [(x0, y0), (x0 + w / 2, y0 + h / 2), (x0 + w, y0 + h)]
            page.mouse.move(*pts[0]); page.mouse.down()
            for p in pts[1:]: page.mouse.move(*p, steps=6)
            t = time.time(); page.mouse.up()
            page.wait_for_function(f'''(b) => {{ const s = ({state})(); return (s.info !== b.info && s.img !== b.img && s.sel !== b.sel) || s.err; }}''',
                                   arg=before, polling='raf', timeout=60_000)
            dt = time.time() - t
            if (err := page.evaluate(state)['err']): raise RuntimeError(f'the explorer reports: {err}')
            n_sel = kernel_eval(kc, 'len(ex.selected)') if k == 0 else None
            lat.append(dt)
            what = 'box' if k == a.lassos else f'lasso {k + 1}'
            print(f'{what}: release -> table + gallery updated: {dt:.2f} s ({page.evaluate(state)["info"].strip()})')
        t_py = kernel_eval(kc, '''(lambda t0: (ex.select_polygon([-1, 1, 1, -1], [-1, -1, 1, 1]), time.perf_counter() - t0)[1])(time.perf_counter())''')
        print(f'Python alone (points in a polygon over {a.n}, table, gallery, overlay bytes): {t_py:.3f} s')
        res.update(lasso_s=lat[:-1], box_s=lat[-1], python_select_s=t_py)
        if a.shot:
            time.sleep(1); page.locator('.jp-OutputArea-output:has(.drgnai-explorer)').first.screenshot(path=str(a.shot))
        kc.stop_channels()
        if log.errors: print('console errors:', log.errors)
    ok1, ok2 = res['cell_to_interactive_s'] < 5, max(res['lasso_s'] + [res['box_s']]) < 1
    print(f"\nsummary, {a.n} particles: explorer cell -> interactive {res['cell_to_interactive_s']:.2f} s (goal < 5 s: {'met' if ok1 else 'missed'}); "
          f"lasso/box release -> table and gallery {np.median(res['lasso_s']):.2f} s median, {max(res['lasso_s'] + [res['box_s']]):.2f} s max "
          f"(goal < 1 s: {'met' if ok2 else 'missed'})")
    print(json.dumps(res))
    return res


if __name__ == '__main__':
    main()
