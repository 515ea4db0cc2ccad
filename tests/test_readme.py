"README.md is rendered from nbs/index.ipynb and holds the two commands; CI runs the test one."
import re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_rendered_from_index():
    r = subprocess.run([sys.executable, 'tools/render_readme.py', '--check'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / 'README.md').read_text()
    assert re.search(r'^make demo\b', readme, re.M) and re.search(r'^make test\b', readme, re.M)
    ci = (ROOT / '.ci' / 'run').read_text()
    assert re.search(r'^make test\s*$', ci, re.M), 'CI must run the README test command'
