"""Render README.md from nbs/index.ipynb with nbconvert (nbdev_readme needs quarto, which cannot be installed here).

Cells whose source starts with `#| hide` are dropped and other `#|` directive lines are removed, as nbdev would.
Usage: python tools/render_readme.py [--check]   (--check: exit 1 if README.md is not up to date)
"""
import sys
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]


def render(nb_path: Path = ROOT / 'nbs' / 'index.ipynb') -> str:
    nb = nbformat.read(nb_path, as_version=4)
    cells = []
    for c in nb.cells:
        lines = c.source.splitlines()
        if c.cell_type == 'code' and any(l.strip().replace(' ', '') in ('#|hide', '#|export', '#|exporti') for l in lines[:3]):
            continue
        c.source = '\n'.join(l for l in lines if not l.lstrip().startswith('#|')).strip('\n')
        cells.append(c)
    nb.cells = cells
    nb.metadata['language_info'] = {'name': 'python'}
    body, _ = MarkdownExporter(exclude_output_prompt=True, exclude_input_prompt=True).from_notebook_node(nb)
    return '<!-- generated from nbs/index.ipynb by tools/render_readme.py: edit the notebook, not this file -->\n\n' + body.strip() + '\n'


if __name__ == '__main__':
    text = render()
    if '--check' in sys.argv:
        same = (ROOT / 'README.md').exists() and (ROOT / 'README.md').read_text() == text
        print('README.md is up to date' if same else 'README.md differs from nbs/index.ipynb: run make readme')
        sys.exit(0 if same else 1)
    (ROOT / 'README.md').write_text(text)
    print('wrote README.md')
