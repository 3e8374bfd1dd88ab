"""The explorer under a real mouse in a real browser: JupyterLab on 127.0.0.1 opens the notebook `analyze` wrote for a
small run, runs it, and Playwright (Debian's chromium) drives it with the mouse: a lasso started on a point, a box,
a double-click to clear, an axis change after a selection, "select clusters", save, the volume slider. Each step
checks what Python holds (a second client on the notebook's kernel) against what the plot highlights and what the
mouse enclosed, and the files saved against both; the browser console must stay free of errors. Screenshots of the
explorer and the volume viewer go to `explore_check/` (git-ignored).

The probes read what the plot painted (the explorer's scatter exposes the pixel positions and the selection it
painted; for a plain plotly scatter, as in older versions, the points plotly.js draws as selected), so the same test
runs against an older explorer: see the
module notes of `14_explore` for how it failed there. Skips when chromium is missing (fails in CI)."""
import json, re, time
from pathlib import Path

import numpy as np
import pytest

from browser import ROOT, chromium_or_skip, launch, LabServer, ConsoleLog, kernel_eval

SHOTS = ROOT / 'explore_check'
N_IMAGES = 300

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')

# ---------------------------------------------------------------------------------------------------------------------
# probes (JavaScript run in the page)
FIND = '''() => [...document.querySelectorAll('.js-plotly-plot')].filter(g => g.data && g.data[0] && g.data[0].type === %r)'''

SCATTER = '''() => {
  const gd = document.querySelector('.drgnai-scatter') || (%s)()[0];
  if (!gd || !gd._fullLayout) return null;
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
  const box = [r.left + xa._offset, r.top + ya._offset, xa._length, ya._length], xtitle = (xa.title || {}).text;
  const api = gd.__drgnai;
  if (api) {  // the explorer's own scatter: the points it painted, and the selection it painted
    if (!api.px || !api.sel) return null;
    const idx = Array.from(api.idx);
    return {idx, x: Array.from(api.px).map(u => box[0] + u), y: Array.from(api.py).map(v => box[1] + v),
            hl: Array.from(api.sel).map(k => idx[k]), xtitle, n: idx.length, box};
  }
  const t0 = gd.data[0];  // a plotly scatter trace: its points, and the overlay trace 'selected' or plotly's own selection
  const idx = Array.from(t0.customdata || []).map(Number);
  const x = Array.from(t0.x).map(v => box[0] + xa.l2p(v));
  const y = Array.from(t0.y).map(v => box[1] + ya.l2p(v));
  const ov = gd.data.findIndex(t => t.name === 'selected');
  let hl;
  if (ov >= 0) hl = Array.from(gd.data[ov].customdata || []).map(Number);
  else {  // no overlay: the points plotly.js draws as selected (selectedpoints of the trace, null = none)
    const sp = (gd._fullData[0] || {}).selectedpoints || t0.selectedpoints;
    hl = Array.isArray(sp) || ArrayBuffer.isView(sp) ? Array.from(sp).map(i => idx[i]) : [];
  }
  return {idx, x, y, hl, xtitle, n: idx.length, box};
}''' % (FIND % 'scattergl')

ISO = '''() => {
  const gd = (%s)()[0];
  if (!gd || !gd._fullLayout || !gd._fullLayout.scene || !gd._fullLayout.scene._scene) return null;
  const sc = gd._fullLayout.scene._scene, objs = sc.glplot.objects;
  const m = objs.find(o => o.positions && o.positions.length);
  if (!m) return {n: 0};
  const pos = m.positions, cells = m.cells || [], used = new Set();
  for (const c of cells) for (const v of c) used.add(v);   // the surface's vertices (positions also hold the grid)
  const vs = [...used], step = Math.max(1, Math.floor(vs.length / 3000));
  return {n: vs.length, cells: cells.length, scale: Array.from(sc.dataScale),
          pos: vs.filter((_, k) => k %% step === 0).map(v => Array.from(pos[v]))};
}''' % (FIND % 'isosurface')


@pytest.fixture(scope='module')
def small_run(tmp_path_factory):
    "A small heterogeneous run (300 particles, 3 states, zdim 2), analysed: the notebook analyze writes, and its folder."
    import torch
    from drgnai_nb import analysis as A
    from drgnai_nb.simulate import SimConfig, simulate_to_dir
    from drgnai_nb.train import TrainConfig, train
    from test_analysis import TINY
    chromium_or_skip('the explorer browser test')
    d = tmp_path_factory.mktemp('explore_browser')
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        simulate_to_dir(SimConfig(n_images=N_IMAGES, D=24, snr=1.0, seed=1, shift_px=1.0, heterogeneity='discrete', n_states=3),
                        d / 'sim', progress=False)
        train(TrainConfig.preset('cpu', particles=str(d / 'sim/particles.mrcs'), ctf=str(d / 'sim/ctf.pkl'), zdim=2, mode='fixed',
                                 poses=str(d / 'sim/poses.pkl'), **TINY), d / 'run', progress=False)
        A.analyze(d / 'run', ksample=3, pc=1, n_per_pc=2, D=12, progress=False)
    finally: torch.set_num_threads(n)
    return d / 'run' / 'analyze.0'


class Lab:
    "The open notebook: the page, the kernel client, the console log."
    def __init__(self, page, kc, log, analysis):
        self.page, self.kc, self.log, self.analysis = page, kc, log, analysis

    def py(self, expr): return kernel_eval(self.kc, expr)

    def selected(self): return self.py('ex.selected.tolist()')

    def scatter(self): return self.page.evaluate(SCATTER)

    def settle(self, n_before=None, timeout=20, want=None):
        "Wait until Python's selection changed from `n_before` (or became `want`) and the plot shows it; return (python, shown)."
        t = time.time()
        while True:
            py, sc = self.selected(), self.scatter()
            if sc and sorted(sc['hl']) == py and (n_before is None or py != n_before) and (want is None or py == want): return py, sc['hl']
            if time.time() - t > timeout: return py, (sc or {}).get('hl')
            time.sleep(0.25)

    def mode(self, val):
        "Click a modebar button (lasso / select) with the mouse."
        sc = self.scatter(); bx = sc['box']
        self.page.mouse.move(bx[0] + bx[2] / 2, bx[1] + bx[3] / 2)
        btn = self.page.locator(f'.drgnai-explorer .modebar-btn[data-val="{val}"], .js-plotly-plot .modebar-btn[data-val="{val}"]').first
        btn.click()

    def drag(self, pts, steps=4):
        "Press at pts[0], move through the others, release at the last (a lasso or a box drag)."
        m = self.page.mouse
        m.move(*pts[0]); m.down()
        for p in pts[1:]: m.move(*p, steps=steps)
        m.up()


@pytest.fixture(scope='module')
def lab(small_run, tmp_path_factory):
    work = tmp_path_factory.mktemp('lab')
    with LabServer(small_run, work) as server, launch() as b:
        page = b.new_page(viewport={'width': 1400, 'height': 1100})
        page.set_default_timeout(30_000)
        log = ConsoleLog(page)
        page.goto(server.url('drgnai_explore.ipynb'))
        page.wait_for_function('window.jupyterapp && document.querySelector(".jp-Notebook .jp-Cell")', timeout=90_000)
        page.wait_for_function('''() => { const w = window.jupyterapp.shell.currentWidget;
            const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
            return k && k.status === 'idle'; }''', timeout=90_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_function(f'() => {{ const s = ({SCATTER})(); return s && s.n === {N_IMAGES}; }}', timeout=120_000)
        page.wait_for_function(f'() => {{ const s = ({ISO})(); return s && s.n > 0; }}', timeout=120_000)
        kc = server.kernel_client()
        L = Lab(page, kc, log, small_run)
        L.py('0')  # the kernel answers
        # the explorer in view, the plot not covered by the header
        page.locator('.js-plotly-plot').first.scroll_into_view_if_needed()
        time.sleep(0.5)
        yield L
        SHOTS.mkdir(exist_ok=True)
        page.set_viewport_size({'width': 1400, 'height': 2600})  # each widget fits the notebook panel whole
        for name, sel in (('explorer.png', '.jp-OutputArea-output:has(.drgnai-explorer), .jp-OutputArea-output:has(.js-plotly-plot)'),
                          ('volume_viewer.png', '.jp-OutputArea-output:has(.js-plotly-plot)')):
            el = page.locator(sel).first if name == 'explorer.png' else page.locator(sel).last
            el.scroll_into_view_if_needed(); time.sleep(1.0)
            el.screenshot(path=str(SHOTS / name))
        kc.stop_channels()


def inside(sc, poly):
    "Run positions of the points whose page pixels lie inside the polygon, and those within 2 px of its edge."
    from matplotlib.path import Path as MPath
    P = np.c_[sc['x'], sc['y']]; pa = MPath(np.asarray(poly, float))
    ins = pa.contains_points(P)
    near = pa.contains_points(P, radius=4) ^ pa.contains_points(P, radius=-4)
    idx = np.asarray(sc['idx'])
    return set(idx[ins & ~near].tolist()), set(idx[near].tolist())


def check_selection(L, expected, ambiguous, py, shown, what):
    assert shown is not None and sorted(shown) == py, f'{what}: the plot highlights {len(shown or [])} particles, Python holds {len(py)}'
    got = set(py)
    assert expected - got == set() and got - expected <= ambiguous, \
        f'{what}: Python holds {len(got)}, the mouse enclosed {len(expected)} (+{len(ambiguous)} on the edge): missing {sorted(expected - got)[:10]}, extra {sorted(got - expected - ambiguous)[:10]}'
    info = L.page.locator('.widget-html-content:has-text("particles selected")').first.inner_text()
    assert re.search(rf'\b{len(py)}\s+of\s+{N_IMAGES}', info), info


def _lasso_around(sc, start, w=110, h=90):
    x0, y0 = start
    return [(x0, y0), (x0 + w, y0 - 10), (x0 + w + 20, y0 + h / 2), (x0 + w, y0 + h), (x0 + 10, y0 + h + 10), (x0 - 15, y0 + h / 2), (x0, y0)]


def test_lasso_started_on_a_point(lab):
    "Hover fires as the lasso starts on a point: the selection must still reach Python and match the plot."
    sc = lab.scatter(); bx = sc['box']
    cx, cy = bx[0] + bx[2] * 0.45, bx[1] + bx[3] * 0.4
    i = int(np.argmin((np.asarray(sc['x']) - cx) ** 2 + (np.asarray(sc['y']) - cy) ** 2))
    start = (sc['x'][i], sc['y'][i])
    lab.page.mouse.move(*start); time.sleep(0.4)  # hover on the point first, as a user does
    poly = _lasso_around(sc, start)
    lab.drag(poly)  # released on the point it started on: hover again, then off it at once (unhover), as a hand does
    j = int(np.argsort((np.asarray(sc['x']) - start[0]) ** 2 + (np.asarray(sc['y']) - start[1]) ** 2)[1])
    lab.page.mouse.move(sc['x'][j], sc['y'][j]); lab.page.mouse.move(start[0] - 30, start[1] - 30)
    exp, amb = inside(sc, poly)
    assert len(exp) >= 5, f'the test lasso encloses only {len(exp)} points'
    py, shown = lab.settle([])
    check_selection(lab, exp, amb, py, shown, 'lasso started on a point')


def test_box_selection(lab):
    lab.mode('select')
    sc = lab.scatter(); bx = sc['box']
    x0, y0, x1, y1 = bx[0] + bx[2] * 0.55, bx[1] + bx[3] * 0.5, bx[0] + bx[2] * 0.8, bx[1] + bx[3] * 0.8
    before = lab.selected()
    lab.drag([(x0, y0), ((x0 + x1) / 2, (y0 + y1) / 2), (x1, y1)])
    exp, amb = inside(sc, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    assert len(exp) >= 5
    py, shown = lab.settle(before)
    check_selection(lab, exp, amb, py, shown, 'box')


def test_double_click_clears(lab):
    "A double-click near a point clears the plot and Python's selection alike."
    assert lab.selected(), 'needs a selection from the previous test'
    sc = lab.scatter()
    i = len(sc['x']) // 2
    lab.page.mouse.dblclick(sc['x'][i] + 3, sc['y'][i] + 2)
    py, shown = lab.settle(lab.selected())
    assert py == [] and shown == [], f'after a double-click Python holds {len(py)}, the plot highlights {len(shown or [])}'


def test_axis_change_after_a_selection(lab):
    "The selection is a set of particles: after an axis change the plot highlights the same ones, the table shows the new axis."
    lab.mode('lasso')
    sc = lab.scatter(); bx = sc['box']
    poly = _lasso_around(sc, (bx[0] + bx[2] * 0.3, bx[1] + bx[3] * 0.3), 150, 120)
    lab.drag(poly)
    exp, amb = inside(sc, poly)
    py, shown = lab.settle([])
    check_selection(lab, exp, amb, py, shown, 'lasso before the axis change')
    xsel = lab.page.locator('.widget-dropdown:has(label:text-is("x")) select').first
    xsel.select_option('z1')
    lab.page.wait_for_function(f'() => {{ const s = ({SCATTER})(); return s && s.xtitle === "z1"; }}', timeout=20_000)
    time.sleep(1.0)
    py2, shown2 = lab.settle()
    assert py2 == py, 'the axis change changed the selection'
    assert shown2 is not None and sorted(shown2) == py, f'after the axis change the plot highlights {len(shown2 or [])} particles, Python holds {len(py)}'
    head = lab.page.locator('.widget-html-content table thead').first.inner_text()
    assert 'z1' in head, f'the table does not show the new axis: {head!r}'
    xsel.select_option('PC1')
    lab.page.wait_for_function(f'() => {{ const s = ({SCATTER})(); return s && s.xtitle === "PC1"; }}', timeout=20_000)


def test_select_clusters(lab):
    "After a lasso, 'select clusters' replaces the selection, in Python and on the plot."
    labels = np.asarray(lab.py("ex.table[ex.cluster_column].tolist()"))
    lab.page.locator('.widget-select-multiple select').first.select_option('1')
    lab.page.get_by_role('button', name='select clusters').click()
    want = np.nonzero(labels == 1)[0].tolist()
    py, shown = lab.settle(want=want)
    assert py == want, f'Python holds {len(py)}, cluster 1 has {len(want)}'
    assert shown is not None and sorted(shown) == want, f'the plot highlights {len(shown or [])}, cluster 1 has {len(want)} (Python {len(py)})'


def test_save(lab):
    "The save button writes what Python holds and the plot shows; it never overwrites unasked; '/' is refused."
    from drgnai_nb.io import load_ind
    py, shown = lab.settle()
    assert py and sorted(shown) == py
    name = lab.page.locator('.widget-text:has(label:text-is("name")) input').first
    name.click(); name.fill('clicked')
    name.press('Enter')
    lab.page.get_by_role('button', name=re.compile(r'save \.pkl \+ \.star')).click()
    sel_dir = Path(lab.py('str(ex.outdir)'))
    f = sel_dir / 'clicked.pkl'
    t = time.time()
    while not f.exists() and time.time() - t < 20: time.sleep(0.2)
    orig = np.asarray(lab.py('ex.run.ind.tolist()'))
    np.testing.assert_array_equal(load_ind(f), orig[py])
    assert (sel_dir / 'clicked.star').exists()
    # a different selection, the same name: nothing overwritten, and the status says so
    lab.page.get_by_role('button', name='invert selection').click(); time.sleep(1)
    mtime = f.stat().st_mtime_ns
    lab.page.get_by_role('button', name=re.compile(r'save \.pkl \+ \.star')).click(); time.sleep(1.5)
    assert f.stat().st_mtime_ns == mtime, 'the save button overwrote clicked.pkl without asking'
    status = lab.py('ex.status.value')
    assert 'already' in status and 'overwrite' in status, status
    np.testing.assert_array_equal(load_ind(f), orig[py])
    # a name with '/' makes no folder
    name.click(); name.fill('sub/dir'); name.press('Enter')
    lab.page.get_by_role('button', name=re.compile(r'save indices')).click(); time.sleep(1.5)
    assert not (sel_dir / 'sub').exists(), "a name with '/' made a folder"
    assert 'nothing saved' in lab.py('ex.status.value')


def test_volume_slider_sets_the_drawn_level(lab):
    "Drag the threshold slider with the mouse: the isosurface is drawn at the slider's value."
    page = lab.page
    handle = page.locator('.widget-slider .noUi-handle').last
    handle.scroll_into_view_if_needed(); time.sleep(0.5)
    track = page.locator('.widget-slider .noUi-target').last.bounding_box()
    hb = handle.bounding_box()
    t_before = lab.py('vv.threshold.value')
    page.mouse.move(hb['x'] + hb['width'] / 2, hb['y'] + hb['height'] / 2); page.mouse.down()
    page.mouse.move(track['x'] + 0.3 * track['width'], hb['y'] + hb['height'] / 2, steps=8); page.mouse.up()
    t = time.time()
    while lab.py('vv.threshold.value') == t_before and time.time() - t < 20: time.sleep(0.2)
    thr = lab.py('vv.threshold.value')
    assert thr != t_before
    readout = page.locator('.widget-slider .widget-readout').last.inner_text()
    assert abs(float(readout) - thr) <= 1e-3 * max(1, abs(thr)) * 10, (readout, thr)
    # the mesh plotly.js draws: interpolate the map at its vertices; they must sit at the threshold
    vol = np.asarray(lab.py('vv.volume(vv.choice.value).tolist()'), np.float64)
    apix = lab.py('float(vv.run.volume_apix(vv.box))')
    time.sleep(1.0)
    t = time.time()
    while True:
        iso = page.evaluate(ISO)
        vals = None
        if iso and iso['n']:
            vals = map_at(vol, apix, np.asarray(iso['pos']) / np.asarray(iso['scale']))
            if abs(np.median(vals) - thr) < 0.02 * abs(lab.py('vv.threshold.max - vv.threshold.min')): break
        if time.time() - t > 20: break
        time.sleep(0.5)
    rng = lab.py('vv.threshold.max - vv.threshold.min')
    assert vals is not None, 'no isosurface drawn'
    assert abs(np.median(vals) - thr) < 0.02 * rng, f'slider at {thr:.4g}, the surface drawn at {np.median(vals):.4g} (map range {rng:.4g})'


def map_at(vol, apix, xyz):
    "Trilinear value of vol[z, y, x] at points (x, y, z) in Å of the viewer's grid ((i - n/2) * apix)."
    from scipy.ndimage import map_coordinates
    n = vol.shape[0]
    ijk = np.asarray(xyz)[:, ::-1] / apix + n // 2
    return map_coordinates(vol, ijk.T, order=1, mode='nearest')


def test_no_console_errors(lab):
    assert not lab.log.errors, lab.log.errors
