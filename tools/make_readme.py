"""Write README.md from nbs/index.ipynb without Quarto (which `nbdev_readme` needs), following the directives the
way nbdev + Quarto treat them on the site: markdown cells as they are; visible code cells as python blocks;
`#| echo: false` cells show their outputs (pictures) without the code; `#| hide` and `#| include: false` cells are
dropped, outputs included (nbdev drops them); `#| output: false` cells show the code only; directive lines stripped;
PNG outputs saved to README_files/; relative links to notebooks (`tutorials/x.ipynb`, `12_train.ipynb`), which the
docs site resolves from nbs/, are rewritten to `nbs/...` so they also resolve from the repository root.
Usage: python tools/make_readme.py [--check]  (--check: exit 1 if README.md is out of date)."""
import base64, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def directives(src):
    "The cell's `#| name: value` directives as {name: value} (value '' for a flag such as `#| hide`)."
    return {m.group(1): m.group(2).strip().lower() for m in re.finditer(r'^#\|\s*([\w-]+):?(.*)$', src, re.M)}


def _repo_links(md):
    "Markdown links to notebooks relative to nbs/ (the site's root) rewritten relative to the repository root."
    return re.sub(r'\]\((?!https?:|/|#|nbs/)([^)\s]+\.ipynb(?:#[^)]*)?)\)', r'](nbs/\1)', md)


def render(nb_path=ROOT / 'nbs' / 'index.ipynb'):
    nb = json.loads(Path(nb_path).read_text())
    parts, images = [], {}
    for cell in nb['cells']:
        src = ''.join(cell['source'])
        lines = src.splitlines()
        if cell['cell_type'] == 'markdown':
            parts.append(_repo_links(src.strip())); continue
        d = directives(src)
        if 'hide' in d or d.get('include') == 'false': continue  # not on the site: neither code nor outputs
        show_code = d.get('echo') != 'false'
        code = '\n'.join(l for l in lines if not l.startswith('#|')).strip()
        if show_code and code: parts.append(f'```python\n{code}\n```')
        if d.get('output') == 'false': continue
        for out in cell.get('outputs', []):
            data = out.get('data', {})
            if 'image/png' in data:
                name = f'README_files/figure-{len(images) + 1}.png'
                images[name] = base64.b64decode(data['image/png'])
                parts.append(f'![]({name})')
    return '<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file -->\n\n' + \
        '\n\n'.join(p for p in parts if p) + '\n', images


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    text, images = render()
    readme = ROOT / 'README.md'
    if '--check' in argv:
        ok = readme.exists() and readme.read_text() == text and all((ROOT / n).exists() for n in images)
        print('README.md is up to date' if ok else 'README.md is out of date: run python tools/make_readme.py')
        return 0 if ok else 1
    (ROOT / 'README_files').mkdir(exist_ok=True)
    for n, b in images.items(): (ROOT / n).write_bytes(b)
    readme.write_text(text)
    print(f'wrote {readme} and {len(images)} figure(s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
