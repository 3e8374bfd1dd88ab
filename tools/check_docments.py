"""List the documentation entries (`show_doc`) whose parameters lack docments, and docments that render as raw links.

Why: the site shows one `show_doc` entry for every exported function and class (nbdev adds them for the public names
defined in `#| export` cells) and for every explicit `show_doc(X)` in a notebook. Its signature block lists each
parameter with its docment (`arg:type, # comment`); a parameter without one is undocumented on the site. nbdev also
turns a backticked name it knows (`` `fsc` ``) into a markdown link everywhere, also inside that signature block, where
the link is shown raw (`[`fsc`](https://...)`): a docment names other functions without backticks.

Usage: python tools/check_docments.py [--check] [NOTEBOOK...]   (default: every notebook in nbs/ with exports)
Prints, per notebook, the entries with undocumented parameters and the docments nbdev would link; `--check` exits 1
when any is found. `entries(nb)` and `problems(nb)` are what tests/test_docs.py uses."""
import ast, importlib, json, re, sys, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
_EXPORT = re.compile(r'^#\|\s*(export|exports)\b', re.M)
_SKIP = {'self', 'cls', 'return'}


def _cells(nb_path):
    return [c for c in json.loads(Path(nb_path).read_text())['cells'] if c['cell_type'] == 'code']


def module_of(nb_path):
    "The module a notebook exports to (`#| default_exp fft` -> `drgnai_nb.fft`), or None."
    for c in _cells(nb_path):
        m = re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M)
        if m: return f'drgnai_nb.{m.group(1)}'
    return None


def entries(nb_path):
    "The show_doc entries of a notebook as (name, object): exported public defs/classes, then explicit show_doc(X)."
    mod = module_of(nb_path)
    if mod is None: return []
    ns = vars(importlib.import_module(mod))
    names = []
    for c in _cells(nb_path):
        src = ''.join(c['source'])
        code = '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!')))
        try: tree = ast.parse(code)
        except SyntaxError: continue
        if _EXPORT.search(src):
            names += [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      and not n.name.startswith('_')]
        names += [ast.unparse(n.args[0]) for n in ast.walk(tree) if isinstance(n, ast.Call)
                  and getattr(n.func, 'id', None) == 'show_doc' and n.args]
    out, seen = [], set()
    for n in names:
        if n in seen: continue
        seen.add(n)
        try: out.append((n, eval(n, dict(ns))))
        except Exception: continue  # a show_doc of a name the module does not hold (rendered from the notebook)
    return out


def _linker():
    from nbdev.doclinks import NbdevLookup
    return NbdevLookup(incl_libs='drgnai_nb')


def problems(nb_path, linker=None):
    "{entry: [problem, ...]} for a notebook: parameters without docments, docments nbdev turns into raw links."
    from fastcore.docments import docments
    linker = linker or _linker()
    out = {}
    for name, obj in entries(nb_path):
        if not callable(obj): continue
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            try: d = docments(obj, full=True, args_kwargs=True)
            except (TypeError, ValueError, OSError): continue
        probs = []
        for arg, info in d.items():
            if arg in _SKIP: continue
            doc = info.get('docment')
            if not doc: probs.append(f'{arg}: no docment')
            elif linker.link_line(doc) != doc: probs.append(f'{arg}: docment renders a raw link: {doc!r}')
        ret = d.get('return', {}).get('docment')
        if ret and linker.link_line(ret) != ret: probs.append(f'return: docment renders a raw link: {ret!r}')
        if probs: out[name] = probs
    return out


def main(argv):
    check = '--check' in argv
    paths = [Path(a) for a in argv if a != '--check'] or sorted(NBS.glob('*.ipynb'))
    linker, total, n_entries = _linker(), 0, 0
    for p in paths:
        if module_of(p) is None: continue
        n_entries += len(entries(p))
        probs = problems(p, linker)
        n = sum(len(v) for v in probs.values())
        total += n
        print(f'{p.name}: {len(probs)} of {len(entries(p))} entries with problems, {n} problems')
        for k, v in probs.items(): print(f'  {k}: ' + '; '.join(v))
    print(f'total: {total} problems in {n_entries} entries')
    return 1 if check and total else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
