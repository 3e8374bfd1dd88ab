"""Move `import` lines out of notebook cells that mix imports with other code, into an import-only cell just above.

Why: `nbdev_docs` (nbdev's `exec_show_docs` processor) executes every cell that contains an import, to render the
`show_doc` pages. A cell with imports *and* other code is then run in full during the docs build: slow (training,
simulation) and failing when it needs variables from cells nbdev does not run (nbdev warns "Found cells containing
imports and other code. See FAQ."). An import-only cell is cheap and safe to run.

Usage: python tools/split_doc_imports.py [--check] NOTEBOOK...   (--check: list the cells, change nothing; exit 1 if any)
Only top-level import statements move; a cell with an import nested in a block is reported and left alone.
The test tests/test_docs.py::test_doc_cells_keep_imports_apart applies the same rule (nbdev's own `_do_eval`)."""
import ast, json, secrets, sys
from pathlib import Path

from nbdev.process import NBProcessor
from nbdev.processors import _ast_contains, _do_eval, _show_docs, _want_doc

_IMPORTS = (ast.Import, ast.ImportFrom)
_RUN_ANYWAY = {'export', 'exports', 'exporti', 'exec_doc'}


def offending_cells(nb_path):
    "Indices of the cells nbdev's doc processing would run in full because they mix imports with other code."
    import warnings
    p = NBProcessor(nb_path, procs=[])
    cells = p.nb.cells
    has_docs = any(_want_doc(c) for c in cells) or \
        any(_show_docs(c.parsed_() or []) for c in cells if c.cell_type == 'code')
    if not has_docs: return []  # nbdev runs nothing in a notebook without exports or show_doc
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for c in cells:
            if c.cell_type != 'code' or not c.source or (c.directives_.keys() & _RUN_ANYWAY): continue
            if not _do_eval(c): continue
            t = c.parsed_()
            if t and _ast_contains(t, _IMPORTS) and _ast_contains(t, (ast.Expr, ast.Assign)): out.append(c.idx_)
    return out


def _split(src):
    "(import-only source, rest) for a cell source, or None when an import is nested inside a block."
    lines = src.splitlines(True)
    body = ast.parse(src).body
    top = [n for n in body if isinstance(n, _IMPORTS)]
    if any(isinstance(n, _IMPORTS) for b in body if not isinstance(b, _IMPORTS) for n in ast.walk(b)): return None
    take = set()
    for n in top: take.update(range(n.lineno - 1, n.end_lineno))
    # a `;`-joined line (`import x; x.f()`) cannot be split by lines
    if any(any(o.lineno - 1 in take for o in ast.walk(b) if hasattr(o, 'lineno')) for b in body if b not in top):
        return None
    direc = [l for l in lines if l.startswith('#|')]
    imp = ''.join(direc + [lines[i] for i in sorted(take)]).rstrip('\n')
    rest = ''.join(l for i, l in enumerate(lines) if i not in take).strip('\n')
    return imp, rest


def fix(nb_path, check=False):
    nb_path = Path(nb_path)
    bad = offending_cells(nb_path)
    if check or not bad: return bad, []
    nb = json.loads(nb_path.read_text(encoding='utf-8'))
    left = []
    for i in sorted(bad, reverse=True):
        cell = nb['cells'][i]
        r = _split(''.join(cell['source']))
        if r is None: left.append(i); continue
        imp, rest = r
        cell['source'] = rest.splitlines(True)
        new = {'cell_type': 'code', 'execution_count': None, 'id': secrets.token_hex(4), 'metadata': {}, 'outputs': [],
               'source': imp.splitlines(True)}
        nb['cells'].insert(i, new)
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    return bad, left


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    check = '--check' in argv
    status = 0
    files = [a for a in argv if not a.startswith('--')]
    if not files:  # no notebooks named: all of the project's (so that a bare --check checks something)
        files = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / 'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)
    for f in files:
        bad, left = fix(f, check)
        if bad:
            status = 1 if check or left else status
            print(f"{f}: cells {bad} mix imports with code" + ('' if check else f"; split {len(bad) - len(left)}") +
                  (f"; fix by hand: {left}" if left else ''))
    return status


if __name__ == '__main__':
    sys.exit(main())
