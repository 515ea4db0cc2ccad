"""The notebook budget of `make test` (tools/pytest_notebooks.py): a notebook over `--nb-budget` seconds fails and is
named, times are printed, and `--save-executed` keeps the outputs nbval saw, with a note where a flagged cell was
skipped. Runs pytest on a two-cell notebook in a subprocess (one kernel start: a few seconds)."""
import json, os, subprocess, sys
from pathlib import Path
import nbformat

ROOT = Path(__file__).resolve().parents[1]
# the project's conftest.py (flags, and the plugin it loads) as a plugin, in a run rooted in a temporary folder
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
PYTEST = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-p', 'conftest', '--nbval-lax']


def test_a_notebook_over_budget_fails_and_outputs_are_saved(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('import time; time.sleep(2.5); print("slept")'),
        nbformat.v4.new_code_cell('#| slow\nraise RuntimeError("a slow cell must not run")'),
        nbformat.v4.new_code_cell('1 + 1')])
    path = tmp_path / 'sleepy.ipynb'
    nbformat.write(nb, path)
    r = subprocess.run(PYTEST + [str(path), '--nb-budget', '2', '--save-executed', str(tmp_path / 'out')],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert 'over the 2 s budget' in out and 'OVER BUDGET' in out and 'notebook run times' in out, out
    saved = nbformat.read(tmp_path / 'out' / 'sleepy.ipynb', as_version=4)
    assert saved.cells[0].outputs[0]['text'] == 'slept\n'
    assert 'not run here: slow' in saved.cells[1].outputs[0]['text']
    assert saved.cells[2].outputs[0]['data']['text/plain'] == '2'
    assert json.loads((tmp_path / 'out' / 'timings.json').read_text())['sleepy.ipynb']['wall_s'] > 2

    r = subprocess.run(PYTEST + [str(path)], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'no budget checked' in r.stdout, r.stdout + r.stderr
