"""The course site (`make docs`): every notebook with its outputs, API pages from the docstrings, search and the
reproduction report, built with MkDocs (Material theme, mkdocs-jupyter, mkdocstrings) into _site/.

Where outputs come from: a notebook is shown as executed by the last `make test` (nbval with `--save-executed
_build/executed`, tools/pytest_notebooks.py) when that copy has the same cells as the source; otherwise it is run
here with nbclient (`--jobs N` at once) and the result kept in _build/executed for the next build. Cells flagged
`#| slow` / `#| cuda` are not run; the page says so under the cell. `--no-execute` builds from whatever outputs are
at hand (quick previews); `--fresh` runs every notebook again.

Equations are typeset by MathJax 2 from the jupyter-server-mathjax package, copied into the site: nothing is loaded
from the network, so the site works offline and from file://.

Usage: python tools/build_docs.py [--out _site] [--jobs 1] [--no-execute | --fresh] [--pages-only NOTEBOOK ...]
"""
import argparse, json, os, re, shutil, subprocess, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import nbformat

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
BUILD = ROOT / '_build'
EXECUTED = BUILD / 'executed'
SRC = BUILD / 'site_src'
MATHJAX_TOKEN = 'AVLEARN_MATHJAX_ROOT/'
MATHJAX_URL = MATHJAX_TOKEN + 'MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe,local/avlearn'
# jupyter-server-mathjax ships the STIX web fonts only (not MathJax's TeX fonts): say so, or MathJax asks for the others
MATHJAX_LOCAL = ('MathJax.Hub.Config({"HTML-CSS": {availableFonts: ["STIX-Web"], preferredFont: "STIX-Web", '
                 'webFont: "STIX-Web", imageFont: null}});\nMathJax.Ajax.loadComplete("[MathJax]/config/local/avlearn.js");\n')
_FLAG_RE = re.compile(r'^\s*#\s*\|\s*(slow|cuda|multigpu)\b', re.M)
_DIRECTIVE_RE = re.compile(r'^\s*#\s*\|')
SECTIONS = (('Foundations', lambda p: p.parent == NBS and p.name != 'index.ipynb'),
            ('Engine', lambda p: p.parent.name == 'engine'), ('Papers', lambda p: p.parent.name == 'papers'))


def notebooks() -> list:
    return sorted(p for p in NBS.rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)


def _cells(nb) -> list: return [(c.cell_type, c.source) for c in nb.cells]


def _flag(cell) -> str | None:
    m = _FLAG_RE.search('\n'.join(cell.source.splitlines()[:5])) if cell.cell_type == 'code' else None
    return m.group(1) if m else None


def cached(src: Path) -> nbformat.NotebookNode | None:
    "The executed copy of `src` from the last test run or build, if its cells are still those of the source."
    exe = EXECUTED / src.relative_to(NBS)
    if not exe.exists(): return None
    nb = nbformat.read(exe, as_version=4)
    return nb if _cells(nb) == _cells(nbformat.read(src, as_version=4)) else None


def execute(src: Path) -> tuple[str, float, str]:
    "Run one notebook with nbclient (flagged cells skipped, errors kept in the page) into _build/executed."
    from nbclient import NotebookClient
    nb = nbformat.read(src, as_version=4)

    class Client(NotebookClient):
        async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
            flag = _flag(cell)
            if flag:
                cell.outputs = [nbformat.v4.new_output('stream', name='stdout', text=f'[not run here: #| {flag}]\n')]
                return cell
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)

    os.environ['MPLBACKEND'] = 'module://matplotlib_inline.backend_inline'   # figures as in Jupyter, not Agg
    t0 = time.time()
    Client(nb, timeout=900, allow_errors=True, kernel_name='python3',
           resources={'metadata': {'path': str(src.parent)}}).execute()
    seconds = time.time() - t0
    errors = [f'{o.ename}: {o.evalue}'[:200] for c in nb.cells if c.cell_type == 'code'
              for o in c.outputs if o.output_type == 'error']
    nb.metadata.setdefault('avlearn', {})['executed'] = {'seconds': round(seconds, 1), 'by': 'nbclient',
                                                        'when': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    dest = EXECUTED / src.relative_to(NBS)
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return str(src.relative_to(NBS)), seconds, '; '.join(errors)


def _page_link(rel: Path, link: str) -> str:
    "A link from notebook `rel` (under nbs/) to another notebook, as written in it, made relative to the site page."
    target = Path(link[4:]) if link.startswith('nbs/') else Path(os.path.normpath(rel.parent / link))
    return os.path.relpath(target, rel.parent)


def for_the_site(nb: nbformat.NotebookNode, rel: Path) -> nbformat.NotebookNode:
    "Drop `#| hide` cells, nbdev's `#|` lines and live widgets; point links to notebooks and the report at site pages."
    depth = len(rel.parts) - 1
    up = '../' * depth
    cells = []
    for c in nb.cells:
        lines = c.source.splitlines()
        if c.cell_type == 'code':
            if any(l.replace(' ', '') == '#|hide' for l in lines[:5]): continue
            c.source = '\n'.join(l for l in lines if not _DIRECTIVE_RE.match(l)).strip('\n')
            if not c.source.strip() and not c.get('outputs'): continue    # e.g. the `#| default_exp` cell
        if c.cell_type == 'markdown':
            # notebook pages are HTML made by nbconvert, whose links MkDocs does not rewrite: link the pages directly
            c.source = re.sub(r'\]\(([\w./-]+)\.ipynb\)', lambda m: f']({_page_link(rel, m.group(1))}.html)', c.source)
            c.source = re.sub(r'\]\((?:\.\./)*results/REPORT\.md\)', f']({up}report.html)', c.source)
        cells.append(c)
    nb.cells = cells
    # a widget needs a kernel: the page keeps the widget's static copy (an image output) and drops the live view, its
    # text fallback ("VBox(children=...") and the saved widget state, whose embed script nbconvert would load from a CDN
    nb.metadata.pop('widgets', None)
    for c in nb.cells:
        if c.cell_type == 'code':
            c.outputs = [o for o in c.outputs if 'application/vnd.jupyter.widget-view+json' not in o.get('data', {})]
    return nb


def api_pages() -> list:
    "One page per module: mkdocstrings renders its docstrings (static analysis with griffe: nothing is imported)."
    pages = []
    for py in sorted((ROOT / 'avlearn').rglob('*.py')):
        if py.name.startswith('_'): continue
        mod = '.'.join(py.relative_to(ROOT).with_suffix('').parts)
        page = Path('api') / (mod + '.md')
        (SRC / page).parent.mkdir(parents=True, exist_ok=True)
        (SRC / page).write_text(f'# `{mod}`\n\n::: {mod}\n')
        pages.append((mod, page))
    return pages


def mkdocs_yml(nav: list) -> str:
    cfg = {
        'site_name': 'avlearn: the course', 'docs_dir': str(SRC), 'use_directory_urls': False,
        'site_description': 'Audio-visual self-supervised learning, one notebook per idea, reproduced in miniature',
        'theme': {'name': 'material', 'font': False, 'features': ['navigation.sections', 'navigation.top',
                                                                  'search.highlight', 'content.code.copy']},
        'plugins': [
            'search',
            {'mkdocs-jupyter': {'execute': False, 'include_source': False, 'no_prompt': True, 'cache': False,
                                'include_requirejs': False, 'custom_mathjax_url': MATHJAX_URL, 'toc_depth': 3}},
            {'mkdocstrings': {'handlers': {'python': {'paths': [str(ROOT)], 'options': {
                'show_source': False, 'docstring_style': None, 'show_root_heading': False, 'members_order': 'source',
                'filters': ['!^_'], 'show_signature_annotations': True, 'heading_level': 2}}}}},
        ],
        'markdown_extensions': ['tables', 'admonition', 'toc'],
        'nav': nav,
    }
    return json.dumps(cfg, indent=1)   # YAML is a superset of JSON


def relocate_mathjax(site: Path):
    "Point every page at the MathJax copy relative to itself, so the site works under any URL and from file://."
    for html in site.rglob('*.html'):
        text = html.read_text(encoding='utf-8')
        if MATHJAX_TOKEN in text:
            up = '../' * (len(html.relative_to(site).parts) - 1)
            html.write_text(text.replace(MATHJAX_TOKEN, up + 'assets/mathjax/'), encoding='utf-8')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=str(ROOT / '_site'))
    ap.add_argument('--jobs', type=int, default=int(os.environ.get('DOCS_JOBS', 1)), help='notebooks run at once')
    ap.add_argument('--no-execute', action='store_true', help='use the outputs at hand, run nothing')
    ap.add_argument('--fresh', action='store_true', help='run every notebook again')
    ap.add_argument('--pages-only', nargs='*', default=None, help='only these notebooks (paths under nbs/): previews')
    a = ap.parse_args(argv)
    t0 = time.time()
    nbs = notebooks()
    if a.pages_only: nbs = [p for p in nbs if str(p.relative_to(NBS)) in a.pages_only or p.name == 'index.ipynb']

    todo = [p for p in nbs if not a.no_execute and (a.fresh or cached(p) is None)]
    ran = []
    if todo:
        print(f'running {len(todo)} notebooks ({a.jobs} at once): ' + ' '.join(str(p.relative_to(NBS)) for p in todo))
        with ProcessPoolExecutor(max(1, a.jobs)) as pool:
            for rel, seconds, errors in pool.map(execute, todo):
                ran.append((rel, seconds))
                print(f'  {seconds:6.1f} s  {rel}' + (f'   ERRORS: {errors}' if errors else ''))
    t_exec = time.time() - t0

    shutil.rmtree(SRC, ignore_errors=True); SRC.mkdir(parents=True)
    sections = {name: [] for name, _ in SECTIONS}
    stale = []
    for p in nbs:
        rel = p.relative_to(NBS)
        nb = cached(p)
        if nb is None: nb, _ = nbformat.read(p, as_version=4), stale.append(str(rel))
        dest = SRC / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(for_the_site(nb, rel), dest)
        for name, test in SECTIONS:
            if test(p): sections[name].append(str(rel))
    report = (ROOT / 'results' / 'REPORT.md').read_text()
    report = re.sub(r'`nbs/([\w/]+)\.ipynb`', r'[\1](\1.ipynb)', report)
    (SRC / 'report.md').write_text(report)
    api = api_pages()
    mj = Path(__import__('jupyter_server_mathjax').__file__).parent / 'static'
    shutil.copytree(mj, SRC / 'assets' / 'mathjax')
    (SRC / 'assets' / 'mathjax' / 'config' / 'local').mkdir(exist_ok=True)
    (SRC / 'assets' / 'mathjax' / 'config' / 'local' / 'avlearn.js').write_text(MATHJAX_LOCAL)
    nav = [{'Home': 'index.ipynb'}] + [{name: pages} for name, pages in sections.items() if pages] + \
          [{'Reproduction report': 'report.md'}, {'API': [{mod: str(page)} for mod, page in api]}]
    yml = BUILD / 'mkdocs.yml'
    yml.write_text(mkdocs_yml(nav))
    t1 = time.time()
    r = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '-q', '-f', str(yml), '-d',
                        str(Path(a.out).resolve())],
                       cwd=ROOT, env=dict(os.environ, NO_MKDOCS_2_WARNING='1'))
    if r.returncode: sys.exit(r.returncode)
    relocate_mathjax(Path(a.out))
    t_site = time.time() - t1
    info = {'notebooks': len(nbs), 'ran_here': dict(ran), 'without_outputs': stale, 'execute_s': round(t_exec, 1),
            'mkdocs_s': round(t_site, 1), 'total_s': round(time.time() - t0, 1)}
    (BUILD / 'docs_build.json').write_text(json.dumps(info, indent=1) + '\n')
    print(f"site in {a.out}: {len(nbs)} notebooks, {len(api)} API pages; ran {len(ran)} notebooks in {t_exec:.0f} s, "
          f"MkDocs {t_site:.0f} s" + (f'; shown without outputs: {stale}' if stale else ''))


if __name__ == '__main__':
    main()
