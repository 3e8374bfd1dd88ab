"""The documentation site as `nbdev_docs` (nbdev's processing + `quarto render`) would build it; Quarto itself cannot
be installed here.

1. nbdev's processing runs exactly as nbdev does (`nbdev.serve._proc_file` + `nbdev.serve_drv.main`, the
   `FilterDefaults` processors, two spawned workers) on a copy of `nbs/`.
2. Each processed page is built as Quarto would build it: Quarto's directives (`include`, `echo`, `output`, `asis`),
   its choice among an output's representations (a widget view wins over text, so a widget without saved state shows
   nothing), pandoc for every markdown part (math only where pandoc's `$` rules find it, heading ids by pandoc's
   auto_identifiers) and nbconvert for code and outputs. The head holds what Quarto's would and nothing more: MathJax 3
   from pandoc's default address and `format.html.include-in-header` of `_quarto.yml` (plotly.js comes from there;
   nothing is injected by the test).
3. Every page opens in headless Chromium (Debian's `chromium` through Playwright, `tests/browser.py`), offline: the
   CDN requests of MathJax and plotly.js are answered from local copies (sphinx-mathjax-offline, the plotly package's
   bundle, at the version `_quarto.yml` names). Checked: no JavaScript or console errors, every figure shown, every
   plotly figure drawn, MathJax typesets every math span without TeX errors and no `$` is left in the text outside
   code, every local link reaches an existing page and an existing anchor.
Also: every show_doc parameter has a docment and no docment renders a raw link (`tools/check_docments.py`), no machine
path in stored outputs, plotly.js in `_quarto.yml` when figures need it. `DOCS_TEST_NBS=DIR` checks another nbs/ (a
checkout of main, say). Screenshots of the home page and one tutorial page go to `docs_check/` (git-ignored).

Skips when chromium, pandoc (pypandoc-binary) or MathJax (sphinx-mathjax-offline) is missing, except in CI (`CI`
set), where `.ci/run` installs chromium and the dev extras bring the rest."""
import ast, json, os, re, shutil, subprocess, sys, time, warnings
from configparser import ConfigParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from browser import chromium_or_skip, launch, ConsoleLog

ROOT = Path(__file__).resolve().parents[1]
NBS = Path(os.environ.get('DOCS_TEST_NBS', ROOT / 'nbs')).resolve()  # override: check a copy
SHOTS = ROOT / 'docs_check'
CFG = ConfigParser(delimiters=['=']); CFG.read(ROOT / 'settings.ini', encoding='utf-8'); CFG = CFG['DEFAULT']
SITE_URL = CFG['doc_host'].rstrip('/') + CFG['doc_baseurl']  # nbdev's doc links point here


def doc_notebooks():
    "The notebooks nbdev renders: nbs/**/*.ipynb, skipping folders that start with _ or . (nbdev_sidebar's rule)."
    return sorted(p.relative_to(NBS) for p in NBS.rglob('*.ipynb')
                  if not any(s.startswith(('_', '.')) for s in p.relative_to(NBS).parts[:-1]))


def out_name(rel):
    "nbdev's output-file for a notebook (`00_fft.ipynb` -> `fft.html`), relative to nbs/."
    from nbdev.frontmatter import _nbpath2html
    return _nbpath2html(Path(rel)).as_posix()


def sidebar_entries(items=None):
    "(section or None, entry) for every page in nbs/sidebar.yml, in order."
    if items is None: items = yaml.safe_load((NBS / 'sidebar.yml').read_text())['website']['sidebar']['contents']
    out = []
    for it in items:
        if isinstance(it, str): out.append((None, it))
        elif 'section' in it:
            if it.get('href'): out.append((it['section'], it['href']))
            out += [(s or it['section'], e) for s, e in sidebar_entries(it.get('contents', []))]
        elif 'href' in it: out.append((None, it['href']))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# configuration
def test_quarto_config():
    q = NBS / '_quarto.yml'
    assert q.is_symlink() and q.resolve() == (ROOT / '_quarto.yml').resolve(), 'nbs/_quarto.yml must link ../_quarto.yml'
    cfg = yaml.safe_load(q.read_text())
    assert cfg['project']['type'] == 'website'
    assert cfg['project'].get('output-dir', CFG['doc_path']) == CFG['doc_path']
    assert set(cfg['metadata-files']) == {'nbdev.yml', 'sidebar.yml'}
    for f in cfg['metadata-files']: assert (NBS / f).is_file(), f
    assert (NBS / cfg['format']['html']['css']).is_file()
    assert cfg['website']['sidebar']['style'] and 'contents' not in cfg['website']['sidebar']  # contents: sidebar.yml
    # nbdev_docs rewrites nbs/nbdev.yml from settings.ini (refresh_quarto_yml): the committed file must be that text
    from nbdev.quarto import _nbdev_yml
    vals = {k: CFG[k] for k in ['title', 'description', 'branch', 'git_url', 'doc_host', 'doc_baseurl']}
    assert (NBS / 'nbdev.yml').read_text() == _nbdev_yml.format(doc_path=Path(CFG['doc_path']).name, **vals)
    # a hand-written sidebar is kept by nbdev_docs only with custom_sidebar = True
    assert CFG.getboolean('custom_sidebar')


def test_sidebar_lists_every_page():
    entries = [e for _, e in sidebar_entries()]
    nbs = [p.as_posix() for p in doc_notebooks()]
    assert entries[0] == 'index.ipynb'
    missing = [e for e in entries if not (NBS / e).is_file()]
    assert not missing, f'sidebar.yml names pages that do not exist: {missing}'
    dup = sorted({e for e in entries if entries.count(e) > 1})
    assert not dup, f'sidebar.yml lists pages twice: {dup}'
    absent = [n for n in nbs if n not in entries]
    assert not absent, f'notebooks missing from nbs/sidebar.yml (add them, e.g. under a "Tutorials" section): {absent}'


def test_doc_cells_keep_imports_apart():
    "nbdev's doc processing runs every cell with an import; one that also computes is run in full (slow, or failing)."
    sys.path.insert(0, str(ROOT / 'tools'))
    try: from split_doc_imports import offending_cells
    finally: sys.path.pop(0)
    bad = {str(p): offending_cells(NBS / p) for p in doc_notebooks()}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, ('cells mixing imports with other code, which nbdev_docs would execute (nbdev FAQ; move the imports '
                     f'to an import-only cell, e.g. python tools/split_doc_imports.py nbs/X.ipynb): {bad}')


@pytest.mark.parametrize('nb', [p.name for p in sorted(NBS.glob('*.ipynb'))])
def test_show_doc_parameters_documented(nb):
    "Every show_doc entry documents each parameter (docments), and no docment renders as a raw link in the signature."
    sys.path.insert(0, str(ROOT / 'tools'))
    try: from check_docments import problems
    finally: sys.path.pop(0)
    bad = problems(NBS / nb)
    assert not bad, f'{nb}: {sum(map(len, bad.values()))} problems in {len(bad)} show_doc entries ' \
                    '(python tools/check_docments.py nbs/' + nb + '):\n' + '\n'.join(f'{k}: {v}' for k, v in bad.items())


def _directives(src):
    return {m.group(1).strip(): m.group(2).strip() for m in re.finditer(r'^#\|\s*([\w-]+):?(.*)$', src, re.M)}


def test_no_figure_dropped_from_the_site():
    "nbdev drops `#| hide` cells whole, outputs included: a figure meant for the reader needs `#| echo: false`."
    lost = []
    for p in doc_notebooks():
        for i, c in enumerate(json.loads((NBS / p).read_text())['cells']):
            d = _directives(''.join(c['source']))
            figs = [o for o in c.get('outputs', []) for k in o.get('data', {})
                    if k.startswith('image/') or k == 'application/vnd.plotly.v1+json']
            if figs and ('hide' in d or d.get('include') == 'false'): lost.append(f'{p} cell {i}')
    assert not lost, f'figures in hidden cells never reach the site (use #| echo: false): {lost}'


# ---------------------------------------------------------------------------------------------------------------------
# nbdev's processing
_PROC = r'''
import json, sys, multiprocessing as mp
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor
import nbdev.serve, nbdev.serve_drv
if __name__ == '__main__':
    path, cache = Path('nbs').resolve(), Path('_proc').resolve()
    files = [nbdev.serve._proc_file(p, cache, path) for p in sorted(path.rglob('*'))]
    res = {}
    with ProcessPoolExecutor(2, mp_context=mp.get_context('spawn')) as ex:   # as proc_nbs: spawn, n_workers
        futs = {str(o[0].relative_to(path)): ex.submit(nbdev.serve_drv.main, o) for o in files if o}
        for k, f in futs.items():
            e = f.exception()
            res[k] = None if e is None else f"{e}\n{str(e.__cause__)[-800:]}"
    print('RESULT' + json.dumps(res))
'''


@pytest.fixture(scope='module')
def processed(tmp_path_factory):
    "A copy of the project's nbs/ processed by nbdev into <tmp>/_proc, as nbdev_docs does before `quarto render`."
    sys.path.insert(0, str(ROOT / 'tools'))
    try: from split_doc_imports import offending_cells
    finally: sys.path.pop(0)
    if any(offending_cells(NBS / p) for p in doc_notebooks()):  # nbdev would run whole test cells: minutes
        pytest.fail('not processed: cells mix imports with code (see test_doc_cells_keep_imports_apart)')
    proj = tmp_path_factory.mktemp('docs_proj')
    shutil.copy(ROOT / 'settings.ini', proj)
    keep = shutil.ignore_patterns('.*', '_proc', '_docs', '*.mrc', '*.mrcs', '*.pkl', '*.pt', '*.cs', '*.star')
    shutil.copytree(NBS, proj / 'nbs', symlinks=False, ignore=keep)  # data files are not pages
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONWARNINGS': 'ignore'}
    t = time.time()
    r = subprocess.run([sys.executable, '-c', _PROC], cwd=proj, env=env, capture_output=True, text=True, timeout=240)
    out = [l for l in r.stdout.splitlines() if l.startswith('RESULT')]
    assert r.returncode == 0 and out, f'nbdev processing crashed:\n{r.stderr[-3000:]}'
    res = json.loads(out[-1][6:])
    print(f'nbdev processing: {len(res)} notebooks in {time.time() - t:.1f} s')
    return proj, res


def test_nbdev_processing(processed):
    proj, res = processed
    assert sorted(res) == sorted(str(p) for p in doc_notebooks())
    failed = {k: v for k, v in res.items() if v}
    assert not failed, 'nbdev_docs would fail on:\n' + '\n\n'.join(f'{k}: {v}' for k, v in failed.items())
    for p in doc_notebooks():
        nb = json.loads((proj / '_proc' / p).read_text())
        fm = yaml.safe_load(''.join(nb['cells'][0]['source']).strip().strip('-'))
        assert fm['output-file'] == Path(out_name(p)).name and fm.get('title'), (p, fm)
        src = json.loads((NBS / p).read_text())
        if any(re.match(r'#\|\s*exports?\b', ''.join(c['source'])) for c in src['cells'] if c['cell_type'] == 'code'):
            docs = [c for c in nb['cells'] if c['cell_type'] == 'code' and 'show_doc(' in ''.join(c['source'])]
            assert docs and all(o.get('data', {}).get('text/markdown') for c in docs for o in c['outputs']), \
                f'{p}: exported code but no rendered show_doc'


# ---------------------------------------------------------------------------------------------------------------------
# HTML, as Quarto would build it from the processed notebooks
# Quarto turns a notebook into markdown (markdown cells as they are, `output: asis` markdown as it is, code and its
# outputs as blocks) and renders it with pandoc: pandoc's markdown reader decides what is math (`$x$`: no space inside
# the dollars) and gives headings their ids (auto_identifiers). Here pandoc (pypandoc-binary) renders every markdown
# part of a page in one call, nbconvert the code and outputs. The page head holds only what Quarto's would: MathJax 3
# from pandoc's default CDN address, the `include-in-header` text of _quarto.yml, nothing else (Quarto's require.js
# and jQuery, which it adds to pages with HTML outputs, are left out: no local copy, and neither plotly.js 4 nor MathJax
# 3 uses them). The browser is offline: requests to the CDN addresses of MathJax and plotly.js are answered from local
# copies (the sphinx-mathjax-offline package, the plotly package's own plotly.min.js, same version checked).
_TEMPLATE = r'''{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock -%}
{% block jupyter_widgets %}{% endblock %}
{%- block html_head_js_mathjax -%}{%- endblock -%}
{%- block html_head_js_mermaidjs -%}{%- endblock -%}
{% block rawcell scoped %}<div class="cell-markdown">{{ cell.source }}</div>{% endblock rawcell %}
{% block extra_css %}
<link rel="stylesheet" href="{{ resources.site.root }}styles.css">
{{ resources.site.head }}
<style>
  #site-nav { position: fixed; top: 0; left: 0; bottom: 0; width: 250px; overflow-y: auto; padding: 1rem;
              background: #f7f7f9; border-right: 1px solid #ddd; font: 14px sans-serif; }
  #site-nav ul { list-style: none; padding-left: 0.6rem; margin: 0.2rem 0 0.6rem 0; }
  #site-nav .section { font-weight: bold; margin-top: 0.6rem; }
  #site-nav a.active { font-weight: bold; }
  main { margin-left: 270px; }
  header.page-title h1 { margin-bottom: 0.2rem; }
</style>
{% endblock extra_css %}
{%- block body_header -%}
<body class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
<nav id="site-nav">{{ resources.site.nav }}</nav>
<main>
<header class="page-title"><h1>{{ resources.site.title | e }}</h1>
{% if resources.site.description %}<div class="description">{{ resources.site.description | e }}</div>{% endif %}
</header>
{%- endblock body_header -%}
'''

PLOTLY_MIME = 'application/vnd.plotly.v1+json'
WIDGET_MIME = 'application/vnd.jupyter.widget-view+json'
WIDGET_STATE = 'application/vnd.jupyter.widget-state+json'
MATHJAX_URL = 'https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml-full.js'  # pandoc's default, used by Quarto
_SEP = '<!--quartoish-cell-break-->'


def pandoc_path():
    "pandoc from the pypandoc-binary wheel (a dev requirement); skips without it, fails in CI."
    try:
        from pypandoc import get_pandoc_path
        return get_pandoc_path()
    except Exception:
        if os.environ.get('CI'): pytest.fail('pypandoc-binary is missing in CI (a dev extra in settings.ini)')
        pytest.skip('pandoc not installed (pip install -e ".[dev]"); the docs site check is skipped')


def mathjax_dir():
    "The folder holding MathJax 3's es5 build (tex-chtml-full.js and its fonts), from sphinx-mathjax-offline."
    import importlib.metadata as md
    try:
        d = md.distribution('sphinx-mathjax-offline')
        f = next(f for f in d.files if str(f).endswith('mathjax/tex-chtml-full.js'))
        return Path(d.locate_file(f)).parent
    except (md.PackageNotFoundError, StopIteration):
        if os.environ.get('CI'): pytest.fail('sphinx-mathjax-offline is missing in CI (a dev extra in settings.ini)')
        pytest.skip('sphinx-mathjax-offline not installed (pip install -e ".[dev]"); the docs site check is skipped')


def header_includes():
    "The HTML `format: html: include-in-header` of _quarto.yml adds to every page (`text:` items and files)."
    cfg = yaml.safe_load((NBS / '_quarto.yml').read_text())
    inc = cfg.get('format', {}).get('html', {}).get('include-in-header', [])
    out = []
    for it in inc if isinstance(inc, list) else [inc]:
        if isinstance(it, dict) and 'text' in it: out.append(it['text'])
        elif isinstance(it, dict) and 'file' in it: out.append((NBS / it['file']).read_text())
        elif isinstance(it, str): out.append((NBS / it).read_text())
    return '\n'.join(out)


def pandoc_html(chunks):
    "Markdown chunks of one page -> their HTML, rendered by pandoc as one document (ids unique across the page)."
    if not chunks: return []
    r = subprocess.run([pandoc_path(), '-f', 'markdown', '-t', 'html5', '--mathjax', '--wrap=none'],
                       input=f'\n\n{_SEP}\n\n'.join(chunks), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    parts = r.stdout.split(_SEP)
    assert len(parts) == len(chunks), 'pandoc merged cells'
    return parts


def _quartoish(nb):
    "Apply what Quarto does with a processed notebook; return (notebook, frontmatter, problems, figures)."
    import nbformat
    fm, problems, figs = {}, [], 0
    cells, md = [], []  # md: (where the HTML goes, markdown), rendered by pandoc afterwards
    states = (nb.metadata.get('widgets', {}).get(WIDGET_STATE, {}) or {}).get('state', {})

    def markdown(src):
        c = nbformat.v4.new_raw_cell('', metadata={'raw_mimetype': 'text/html'})
        cells.append(c); md.append((lambda html: setattr(c, 'source', html), src))

    def markdown_output(data):  # a text/markdown output: Quarto renders it with pandoc like the rest of the page
        def put(html): data.pop('text/markdown'); data['text/html'] = html
        md.append((put, data['text/markdown']))

    for c in nb.cells:
        if c.cell_type == 'raw' and c.source.startswith('---'):
            fm = yaml.safe_load(c.source.strip().strip('-')) or {}; continue
        if c.cell_type == 'markdown': markdown(c.source); continue
        if c.cell_type != 'code': cells.append(c); continue
        d = _directives(c.source)
        if d.get('include') == 'false': continue
        src = '\n'.join(l for l in c.source.splitlines() if not l.startswith('#|')).strip()
        if d.get('output') == 'false': c.outputs = []
        if d.get('output') == 'asis':  # raw markdown for the page (show_doc)
            text = ''.join(o.get('data', {}).get('text/markdown', '') for o in c.outputs)
            if d.get('echo') != 'false' and src: cells.append(nbformat.v4.new_code_cell(src))
            if text.strip(): markdown(text)
            continue
        c.source = src
        if d.get('echo') == 'false' or not src: c.metadata.setdefault('tags', []).append('remove_input')
        for o in c.outputs:
            data = o.get('data', {})
            if WIDGET_MIME in data:  # Quarto prefers the widget view to every other representation
                mid = data[WIDGET_MIME].get('model_id')
                if mid not in states:
                    problems.append(f'cell {c.get("id")}: widget output without saved widget state: Quarto shows the '
                                    'widget view, which is empty here. Hide it (#| output: false, with a static '
                                    'figure beside it) or save the widget state in the notebook')
                for k in [k for k in data if k != WIDGET_MIME]: data.pop(k)
                data['text/html'] = f'<script type="{WIDGET_MIME}">{json.dumps(data.pop(WIDGET_MIME))}</script>'
            if PLOTLY_MIME in data and 'text/html' not in data:
                problems.append(f'cell {c.get("id")}: plotly figure stored only as {PLOTLY_MIME}; Quarto cannot show '
                                "it. Store its HTML (e.g. pio.renderers.default = 'notebook')")
            if 'text/markdown' in data and not data.keys() & {'text/html', WIDGET_MIME, 'application/javascript'}:
                markdown_output(data)
            html = data.get('text/html', '')
            html = ''.join(html) if isinstance(html, list) else html
            if 'Plotly.newPlot' in html or PLOTLY_MIME in data: figs += 1
            figs += sum(k.startswith('image/') for k in data)
        cells.append(c)
    for (put, _), html in zip(md, pandoc_html([s for _, s in md])): put(html)
    nb.cells = cells
    nb.metadata.pop('widgets', None)
    return nb, fm, problems, figs


def _nav(entries, titles, here):
    "The sidebar from sidebar.yml as nested HTML lists, links relative to the page `here`."
    depth = here.count('/')
    html, cur = ['<ul>'], None
    for sec, e in entries:
        if sec != cur:
            if cur is not None: html.append('</ul></li>')
            if sec is not None: html.append(f'<li class="section">{sec}<ul>')
            cur = sec
        href = '../' * depth + out_name(e)
        cls = ' class="active"' if out_name(e) == here else ''
        html.append(f'<li><a{cls} href="{href}">{titles.get(e, e)}</a></li>')
    if cur is not None: html.append('</ul></li>')
    return ''.join(html + ['</ul>'])


@pytest.fixture(scope='module')
def site(processed, tmp_path_factory):
    "Every processed page rendered to <tmp>/site/<output-file> (pandoc + nbconvert); returns (site dir, {page: info})."
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    proj, res = processed
    if any(res.values()): pytest.fail('nbdev processing failed (see test_nbdev_processing)')
    pandoc_path()
    site = tmp_path_factory.mktemp('site')
    tpl = site.parent / 'site_template'; tpl.mkdir(exist_ok=True)
    (tpl / 'index.html.j2').write_text(_TEMPLATE)
    (tpl / 'conf.json').write_text(json.dumps({'base_template': 'lab', 'mimetypes': {'text/html': True}}))
    exp = HTMLExporter(extra_template_basedirs=[str(tpl.parent)], template_name=tpl.name)
    trp = TagRemovePreprocessor(remove_input_tags={'remove_input'}, enabled=True)
    exp.register_preprocessor(trp, enabled=True)
    nbs, titles, pages = {}, {}, {}
    t = time.time()
    for p in doc_notebooks():
        nb, fm, problems, figs = _quartoish(nbformat.read(proj / '_proc' / p, as_version=4))
        nbs[p.as_posix()] = (nb, fm, problems, figs)
        titles[p.as_posix()] = fm.get('title', p.stem)
    entries = sidebar_entries()
    head = f'<script src="{MATHJAX_URL}" type="text/javascript"></script>\n' + header_includes()
    for rel, (nb, fm, problems, figs) in nbs.items():
        here = out_name(rel)
        root = '../' * here.count('/')
        site_res = dict(root=root, nav=_nav(entries, titles, here), title=fm.get('title', rel),
                        description=fm.get('description', ''), head=head)
        html, _ = exp.from_notebook_node(nb, resources={'site': site_res, 'metadata': {'name': fm.get('title', rel)},
                                                        'raw_mimetypes': ['text/html']})  # the pandoc-rendered cells
        # links: nbdev's doc links (absolute, to the site) and .ipynb links become the local pages, as on the site
        html = html.replace(f'href="{SITE_URL}/', f'href="{root}')
        html = re.sub(r'href="([^":#]+)\.ipynb(#[^"]*)?"',
                      lambda m: f'href="{Path(out_name(m.group(1) + ".ipynb")).as_posix()}{m.group(2) or ""}"', html)
        (site / here).parent.mkdir(parents=True, exist_ok=True)
        (site / here).write_text(html, encoding='utf-8')
        pages[here] = dict(nb=rel, problems=problems, figures=figs, title=fm.get('title'))
    shutil.copy(NBS / 'styles.css', site / 'styles.css')
    print(f'rendered {len(pages)} pages in {time.time() - t:.1f} s to {site}')
    return site, pages


def test_pages_rendered(site):
    d, pages = site
    assert set(pages) == {out_name(p) for p in doc_notebooks()} and 'index.html' in pages
    problems = {k: v['problems'] for k, v in pages.items() if v['problems']}
    assert not problems, problems


def test_plotly_js_on_the_site():
    "Figures stored as HTML without plotly.js need it from the site's header, at the version that made them."
    from plotly.io._utils import plotly_cdn_url
    need = []
    for p in doc_notebooks():
        for c in json.loads((NBS / p).read_text())['cells']:
            for o in c.get('outputs', []):
                h = o.get('data', {}).get('text/html', '')
                h = ''.join(h) if isinstance(h, list) else h
                if 'Plotly.newPlot' in h and not re.search(r'plotly\.js v\d|<script[^>]+src="[^"]*plotly', h):
                    need.append(str(p))
    srcs = re.findall(r'<script[^>]+src="([^"]*plotly[^"]*)"', header_includes())
    if need:
        assert srcs, f'plotly figures without plotly.js in {sorted(set(need))} and no plotly.js in _quarto.yml ' \
                     'format.html.include-in-header: on the site they are blank ("Plotly is not defined")'
    for s in srcs: assert s == plotly_cdn_url(), f'_quarto.yml loads {s}; the figures were made for {plotly_cdn_url()}'


_MACHINE_PATH = re.compile(r'(?<![\w.])/(?:work|tmp|root|home)/[\w.-]+')


def test_no_machine_paths_in_outputs():
    "Stored outputs show no path of the machine that executed them (/work, /tmp, /root, /home)."
    found = []
    for p in doc_notebooks():
        for i, c in enumerate(json.loads((NBS / p).read_text())['cells']):
            for o in c.get('outputs', []):
                texts = [o.get('text', '')] + [v for k, v in o.get('data', {}).items() if k.startswith('text/')]
                texts += [' '.join(o.get('traceback', []))]
                for t in texts:
                    t = ''.join(t) if isinstance(t, list) else t
                    found += [f'{p} cell {i}: {m.group(0)}' for m in _MACHINE_PATH.finditer(t)]
    assert not found, 'machine paths in stored outputs:\n' + '\n'.join(sorted(set(found))[:40])


# ---------------------------------------------------------------------------------------------------------------------
# headless Chromium through Playwright (tests/browser.py: the project's one browser driver)
_PROBE = r'''(() => {
  const imgs = [...document.images].map(i => ({src: i.src.slice(0, 80), ok: i.complete && i.naturalWidth > 0}));
  const plots = [...document.querySelectorAll('.plotly-graph-div')].map(d => !!d.querySelector('.main-svg'));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  const nav = [...document.querySelectorAll('#site-nav a')].length;
  return {imgs, plots, links, nav, h1: (document.querySelector('h1') || {}).textContent,
          height: document.documentElement.scrollHeight, ready: document.readyState};
})()'''

# After MathJax: ids on the page, math left untypeset or in error, and `$` left in the text outside code and math
_MATH_PROBE = r'''(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const main = document.querySelector('main');
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  const spans = [...main.querySelectorAll('span.math')];
  const untypeset = spans.filter(s => !s.querySelector('mjx-container')).map(s => s.textContent.slice(0, 80));
  const errors = [...main.querySelectorAll('mjx-merror')].map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 120));
  const skip = 'pre, code, script, style, mjx-container, mjx-assistive-mml, .plotly-graph-div';
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT,
      {acceptNode: n => n.parentElement.closest(skip) ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
  const raw = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const t = n.textContent, i = t.indexOf('$');
    if (i >= 0) raw.push(t.slice(Math.max(0, i - 40), i + 40).replace(/\s+/g, ' '));
  }
  return {ids, untypeset, errors, raw, typeset: !!(window.MathJax && MathJax.startup), spans: spans.length};
})()'''


@pytest.fixture(scope='module')
def browser():
    chromium_or_skip('the docs browser check')
    with launch(extra_args=['--allow-file-access-from-files']) as b:
        yield b


def _shot(page, path, height):
    page.set_viewport_size({'width': 1280, 'height': max(900, min(int(height), 4000))})
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({'width': 1280, 'height': 900})


def _serve_cdn(page):
    "Answer the CDN requests of the site's head from local copies: MathJax 3 (es5 build) and the plotly package's plotly.js."
    import plotly
    from plotly.io._utils import plotly_cdn_url
    mj = mathjax_dir()
    base = MATHJAX_URL.rsplit('/', 1)[0] + '/'

    def mathjax(route):
        f = mj / urlparse(route.request.url).path[len(urlparse(base).path):]
        if f.is_file(): route.fulfill(path=str(f))
        else: route.abort()
    page.route(base + '**', mathjax)
    page.route(plotly_cdn_url(), lambda r: r.fulfill(
        path=str(Path(plotly.__file__).parent / 'package_data' / 'plotly.min.js'), content_type='text/javascript'))


def test_pages_in_chromium(site, browser):
    d, pages = site
    page = browser.new_page(viewport={'width': 1280, 'height': 900})
    log = ConsoleLog(page)
    _serve_cdn(page)
    tutorials = sorted(p for p in pages if p.startswith('tutorials/'))
    shot_page = tutorials[0] if tutorials else max((p for p in pages if p != 'index.html'),
                                                   key=lambda p: pages[p]['figures'])
    SHOTS.mkdir(exist_ok=True)
    failures, external, t = [], {}, time.time()
    ids, links = {}, {}
    for page_name, info in sorted(pages.items()):
        n_err, n_ext = len(log.errors), len(log.external)
        page.goto((d / page_name).as_uri(), wait_until='load', timeout=60_000)
        for _ in range(50):  # images decoded and plotly drawn
            r = page.evaluate(_PROBE)
            if all(i['ok'] for i in r['imgs']) and all(r['plots']): break
            time.sleep(0.1)
        m = page.evaluate(_MATH_PROBE)
        ids[(d / page_name).resolve()] = set(m['ids'])
        links[page_name] = r['links']
        errs, ext = log.errors[n_err:], log.external[n_ext:]
        if ext: external[page_name] = ext
        bad_img = [i['src'] for i in r['imgs'] if not i['ok']]
        shown = sum(i['ok'] for i in r['imgs']) + sum(r['plots'])
        if errs: failures.append(f'{page_name}: {errs}')
        if bad_img: failures.append(f'{page_name}: images not loaded {bad_img}')
        if not all(r['plots']): failures.append(f'{page_name}: {r["plots"].count(False)} plotly figures not drawn')
        if shown < info['figures']: failures.append(f'{page_name}: {shown} of {info["figures"]} figures shown')
        if r['nav'] < len(pages): failures.append(f'{page_name}: sidebar has {r["nav"]} links for {len(pages)} pages')
        if not r['h1'] or r['h1'].strip() != (info['title'] or '').strip():
            failures.append(f'{page_name}: title {r["h1"]!r}, expected {info["title"]!r}')
        if m['spans'] and not m['typeset']: failures.append(f'{page_name}: MathJax did not load')
        if m['untypeset']: failures.append(f'{page_name}: math not typeset {m["untypeset"][:5]}')
        if m['errors']: failures.append(f'{page_name}: TeX errors {m["errors"][:5]}')
        if m['raw']: failures.append(f'{page_name}: raw $ in the text (pandoc reads no math there: no space may '
                                     f'follow the opening $ or precede the closing one) {m["raw"][:5]}')
        if page_name in ('index.html', shot_page):
            _shot(page, SHOTS / (page_name.replace('/', '_').replace('.html', '.png')), r['height'])
    for page_name, hrefs in links.items():  # every local link: its page exists, and so does its anchor
        missing, broken = set(), set()
        for href in hrefs:
            u = urlparse(href)
            if u.scheme != 'file': continue
            f = Path(unquote(u.path)).resolve()
            if not f.is_file(): missing.add(href.split(d.as_uri())[-1]); continue
            if u.fragment and f in ids and unquote(u.fragment) not in ids[f]: broken.add(href.split(d.as_uri())[-1])
        if missing: failures.append(f'{page_name}: links to missing pages {sorted(missing)}')
        if broken: failures.append(f'{page_name}: links to missing anchors {sorted(broken)}')
    print(f'chromium: {len(pages)} pages in {time.time() - t:.1f} s; screenshots in {SHOTS}: index.png, '
          f'{shot_page.replace("/", "_").replace(".html", ".png")}')
    if external: print('external resources not loaded (offline by design):', json.dumps(external, indent=1)[:2000])
    page.close()
    assert not failures, '\n'.join(failures)
