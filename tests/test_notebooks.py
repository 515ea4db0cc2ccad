"""The notebooks as a student meets them in JupyterLab (issue 24), checked without a browser (tests/test_lab.py has
one): every notebook names the avlearn kernel, show_doc writes plain Markdown, every widget cell leaves a static copy, and
`make lab` starts as root and prints its URL."""
import json, os, re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
import notebook_kernel  # noqa: E402  (tools/notebook_kernel.py)

# a cell that builds a widget: ipywidgets' interact family
WIDGET_RE = re.compile(r'\b(?:widgets\.)?(?:interactive_output|interactive|interact)\s*\(')


def _nbs():
    return notebook_kernel.notebooks(ROOT)


def _code_cells(path):
    cells = json.loads(path.read_text(encoding='utf-8'))['cells']
    return [''.join(c['source']) for c in cells if c['cell_type'] == 'code']


def test_every_notebook_names_the_avlearn_kernel():
    bad = {str(p.relative_to(ROOT)): notebook_kernel.needs_fix(json.loads(p.read_text(encoding='utf-8')))
           for p in _nbs()}
    bad = {p: why for p, why in bad.items() if why}
    assert not bad, f"run `python tools/notebook_kernel.py` (or `make notebooks`): {bad}"


def test_the_kernelspec_survives_nbdev_clean(tmp_path):
    "nbdev_clean keeps the kernelspec that tools/notebook_kernel.py writes, byte for byte."
    from execnb.nbio import read_nb, write_nb
    from nbdev.clean import clean_nb
    from nbdev.config import get_config
    src = ROOT / 'nbs' / '00_core.ipynb'
    nb = read_nb(src)
    cfg = get_config(path=src)
    clean_nb(nb, cfg.clear_all, cfg.get('allowed_metadata_keys').split(), cfg.get('allowed_cell_metadata_keys').split(),
             cfg.clean_ids)
    write_nb(nb, tmp_path / 'x.ipynb')
    assert (tmp_path / 'x.ipynb').read_text(encoding='utf-8') == src.read_text(encoding='utf-8')
    assert nb['metadata']['kernelspec'] == notebook_kernel.KERNELSPEC


def test_the_kernel_check_can_fail():
    assert notebook_kernel.needs_fix({'metadata': {}}) and notebook_kernel.needs_fix(
        {'metadata': {'kernelspec': dict(notebook_kernel.KERNELSPEC), 'widgets': {}}})
    assert notebook_kernel.needs_fix({'metadata': {'kernelspec': dict(notebook_kernel.KERNELSPEC)}}) == []


def test_show_doc_writes_plain_markdown():
    "No Quarto-only `{target=...}` attribute, which JupyterLab prints as a raw line above every signature."
    from nbdev.config import get_config
    from nbdev.showdoc import show_doc
    from avlearn.core import check_tensor
    assert get_config(path=ROOT).get('renderer') == 'avlearn.core.DocRenderer'
    md = show_doc(check_tensor)._repr_markdown_()
    assert '### check_tensor' in md and 'def check_tensor(' in md and '{target' not in md and '](' not in md


def widget_cells_without_static_copy(paths) -> list:
    return [f"{p.relative_to(ROOT)} cell: {src.splitlines()[0][:80]}" for p in paths for src in _code_cells(p)
            if WIDGET_RE.search(src) and 'static_copy(' not in src]


def test_every_widget_cell_leaves_a_static_copy():
    "A widget draws only with a live kernel; `static_copy(draw)` in its cell leaves a plain copy (CONTRIBUTING.md)."
    missing = widget_cells_without_static_copy(_nbs())
    assert not missing, f"end these widget cells with `static_copy(draw)` (avlearn.core): {missing}"
    assert sum(bool(WIDGET_RE.search(s)) for p in _nbs() for s in _code_cells(p)) >= 5   # the check sees the widgets


def test_the_widget_check_can_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], 'ROOT', tmp_path)
    nb = {'cells': [{'cell_type': 'code', 'source': ['w = widgets.interactive(f, x=(0, 3))\n', 'display(w)']}]}
    (tmp_path / 'a.ipynb').write_text(json.dumps(nb))
    assert len(widget_cells_without_static_copy([tmp_path / 'a.ipynb'])) == 1


@pytest.mark.skipif(not Path('/usr/bin/make').exists(), reason='no make')
def test_make_lab_runs_as_root_and_prints_the_url(tmp_path):
    "`make lab` as root adds --allow-root and prints the URL with its token (a stand-in jupyter prints its arguments)."
    venv = tmp_path / 'venv'
    (venv / 'bin').mkdir(parents=True)
    (venv / 'bin' / 'jupyter').write_text('#!/bin/sh\necho "jupyter $*"\n')
    (venv / 'bin' / 'jupyter').chmod(0o755)
    (venv / 'bin' / 'python').symlink_to(sys.executable)
    env = dict(os.environ, LAB_TOKEN='abc123')
    env.pop('DISPLAY', None); env.pop('BROWSER', None)
    # STAMP and KERNEL are taken as made (-o): this runs only the lab recipe
    r = subprocess.run(['make', '--no-print-directory', 'lab', f'VENV={venv}', 'LAB_PORT=8765',
                        '-o', f'{venv}/.installed', '-o', f'{venv}/share/jupyter/kernels/avlearn/kernel.json'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert 'http://127.0.0.1:8765/lab?token=abc123' in r.stdout
    args = r.stdout.split('jupyter lab', 1)[1]
    assert ('--allow-root' in args) == (os.getuid() == 0) and '--no-browser' in args
    assert '--IdentityProvider.token=abc123' in args and '--ServerApp.port_retries=0' in args


def flagged_cells_without_guard(paths) -> list:
    "Cells flagged `#| slow` that do not ask `run_slow(...)`, and `#| cuda` ones that do not ask `has_cuda(...)`."
    guards = {'#| slow': 'run_slow(', '#| cuda': 'has_cuda('}
    return [f"{p.relative_to(ROOT)} cell: {src.splitlines()[0][:80]}" for p in paths for src in _code_cells(p)
            for flag, guard in guards.items() if src.startswith(flag) and guard not in src]


def test_slow_and_cuda_cells_say_they_were_skipped():
    "Run All on a laptop CPU: a slow or GPU cell prints that it was skipped instead of running for minutes or failing."
    assert not flagged_cells_without_guard(_nbs())
    assert flagged_cells_without_guard([ROOT / 'nbs' / 'papers' / '21_gdt.ipynb']) == [] and any(
        src.startswith('#| slow') for src in _code_cells(ROOT / 'nbs' / 'papers' / '21_gdt.ipynb'))
