"""JupyterLab as a student meets it, in headless Chromium (issue 24): `make lab` starts (as root too), a notebook with a
widget opens with no "Select Kernel" dialog, Run All gives no error output, the widget draws as a control with whole
labels, show_doc shows no raw Quarto attributes, and after Save, a kernel shut-down and a reload the widget still draws
and the static copy is still there.

Runs with `make test-lab` (pytest --run-lab); skipped when Debian's chromium and chromium-driver or selenium are missing
(apt-get install chromium chromium-driver; pip install selenium, setup.py's `lab` extra). The notebook is a copy in a
temporary folder, so Run All and Save never touch nbs/. AVLEARN_LAB_NOTEBOOK picks another notebook (default
01_data.ipynb); AVLEARN_LAB_SHOTS=folder keeps screenshots.
"""
import json, os, shutil, signal, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
from headless import chromium, free_port, require_chromium, wait   # tests/headless.py

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = os.environ.get('AVLEARN_LAB_NOTEBOOK', '01_data.ipynb')
KERNEL_DISPLAY_NAME = 'Python 3 (avlearn)'
RUN_TIMEOUT = 600   # seconds for Run All on a loaded 2-core machine

pytestmark = pytest.mark.lab


@pytest.fixture
def lab(tmp_path):
    "`make lab` serving a copy of NOTEBOOK from a temporary folder; yields (base url, token, notebook copy, log)."
    require_chromium('make test-lab')
    shutil.copy(ROOT / 'settings.ini', tmp_path / 'settings.ini')        # nbdev's show_doc reads it
    (tmp_path / 'nbs').mkdir()
    copy = tmp_path / 'nbs' / Path(NOTEBOOK).name
    shutil.copy(ROOT / 'nbs' / NOTEBOOK, copy)
    port, token, log = free_port(), os.urandom(12).hex(), tmp_path / 'lab.log'
    venv = Path(sys.prefix)
    env = dict(os.environ, LAB_TOKEN=token, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''),
               JUPYTER_CONFIG_DIR=str(tmp_path / 'jupyter_config'))   # a student's own settings stay out
    env.pop('DISPLAY', None); env.pop('BROWSER', None)
    with open(log, 'w') as out:
        # the .venv stamp is taken as made (-o): this test never reinstalls; the kernel is registered if missing
        proc = subprocess.Popen(['make', '--no-print-directory', 'lab', f'VENV={venv}', f'LAB_DIR={tmp_path / "nbs"}',
                                 f'LAB_PORT={port}', '-o', f'{venv}/.installed'], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f'http://127.0.0.1:{port}'
    try:
        wait('JupyterLab to answer', lambda: proc.poll() is None and urllib.request.urlopen(
            f'{base}/api/status?token={token}', timeout=5).status == 200 or proc.poll() is not None, 180)
        assert proc.poll() is None, f'make lab exited ({proc.returncode}):\n{log.read_text()[-3000:]}'
        assert f'{base}/lab?token={token}' in log.read_text(), 'make lab should print the URL to open'
        yield base, token, copy, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(30)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def browser():
    driver = chromium('make test-lab', '1400,1000')
    try: yield driver
    finally: driver.quit()


def _js(driver, script, *args): return driver.execute_script(script, *args)


def _menu(driver, top, item):
    "Click JupyterLab's menu `top` > `item`."
    from selenium.webdriver.common.by import By
    driver.find_element(By.XPATH, f"//li[contains(@class,'lm-MenuBar-item')][.//div[text()='{top}']]").click()
    wait(f'menu item {item}', lambda: driver.find_element(
        By.XPATH, f"//li[contains(@class,'lm-Menu-item')][.//div[text()='{item}']]"), 20).click()


def _shot(driver, name):
    keep = os.environ.get('AVLEARN_LAB_SHOTS')
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True); driver.save_screenshot(str(Path(keep) / name))


def _open(driver, base, token, name):
    "Open the notebook and wait until its kernel is up (the kernel name in the toolbar is ours)."
    driver.get(f'{base}/lab/tree/{name}?token={token}')
    wait('the notebook', lambda: _js(driver, "return document.querySelectorAll('.jp-Notebook .jp-Cell').length"), 120)
    kernel = lambda: _js(driver, "const k = document.querySelector('.jp-NotebookPanel-toolbar .jp-KernelName'); "
                                 "return k && k.textContent.trim() === arguments[0]", KERNEL_DISPLAY_NAME)
    wait('the avlearn kernel in the toolbar (or a dialog)', lambda: kernel() or _dialogs(driver), 120)
    assert _dialogs(driver) == [], f'a dialog opened with the notebook: {_dialogs(driver)}'
    assert kernel(), 'the notebook did not start the "Python 3 (avlearn)" kernel'


def _dialogs(driver) -> list:
    return _js(driver, "return [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText.slice(0, 200))")


def _widget_report(driver) -> dict:
    return _js(driver, """
        const out = [...document.querySelectorAll('.jp-OutputArea-output')];
        const controls = document.querySelectorAll(['slider', 'dropdown', 'checkbox']
            .map(k => `.jp-OutputArea-output .jupyter-widgets.widget-${k}`).join(', '));
        return {controls: controls.length,
                errors: [...document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]')]
                        .map(e => e.textContent.slice(0, 500)),
                model_not_found: out.filter(o => o.textContent.includes('Error displaying widget')).length,
                static_copies: out.filter(o => o.textContent.includes('Static copy of the widget')).length,
                images: document.querySelectorAll('.jp-OutputArea-output img').length,
                quarto: out.some(o => o.textContent.includes('{target=')),
                prompts: [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim())};
    """)


def _cut_labels(driver) -> list:
    """Widget labels drawn shorter than their text ('n_distract...'), each scrolled into view first (JupyterLab skips
    the layout of cells far from the viewport)."""
    from selenium.webdriver.common.by import By
    cut = []
    for label in driver.find_elements(By.CSS_SELECTOR, '.jp-OutputArea-output .widget-label'):
        _js(driver, "arguments[0].scrollIntoView({block: 'center'})", label); time.sleep(0.3)
        if _js(driver, "const l = arguments[0]; return l.textContent.trim() && l.clientWidth > 0 && "
                       "l.scrollWidth > l.clientWidth + 1", label): cut.append(label.get_attribute('textContent'))
    return cut


def test_a_student_opens_runs_saves_and_reopens_a_notebook(lab, browser):
    base, token, copy, log = lab
    d = browser
    _open(d, base, token, copy.name)
    time.sleep(2)                                           # a kernel dialog would show up by now
    assert _dialogs(d) == [], f'a dialog opened with the notebook: {_dialogs(d)}'
    _menu(d, 'Run', 'Run All Cells')
    done = lambda: (lambda p: p and all(x[:1] == '[' and x[1:-2].strip().isdigit() for x in p))(
        _widget_report(d)['prompts'])
    wait('Run All to finish', done, RUN_TIMEOUT, every=2)
    time.sleep(2)
    _shot(d, '1_after_run_all.png')
    r = _widget_report(d)
    assert r['errors'] == [], f'error or warning output after Run All: {r["errors"]}'
    assert _dialogs(d) == [], _dialogs(d)
    assert r['controls'] >= 1 and r['model_not_found'] == 0, r
    assert _cut_labels(d) == [], f'widget labels cut short: {_cut_labels(d)}'
    _shot(d, '1b_widget.png')
    assert r['static_copies'] >= 1 and r['images'] >= 1, r
    assert not r['quarto'], 'show_doc output shows a raw {target=...} attribute'

    # save, shut the kernel down, reopen: the saved widget state and the static copy draw again, still no dialog
    _menu(d, 'File', 'Save Notebook')
    with_state = lambda: (lambda nb: nb if 'widgets' in nb['metadata'] else None)(json.loads(copy.read_text()))
    saved = wait('the saved notebook to carry widget state', with_state, 60)
    assert saved['metadata']['kernelspec']['name'] == 'avlearn'
    sessions = json.load(urllib.request.urlopen(f'{base}/api/sessions?token={token}', timeout=10))
    for s in sessions:
        urllib.request.urlopen(urllib.request.Request(f'{base}/api/sessions/{s["id"]}?token={token}', method='DELETE'),
                               timeout=30)
    _open(d, base, token, copy.name)
    wait('the widgets to draw from the saved state', lambda: _widget_report(d)['controls'] >= 1, 60)
    time.sleep(3)
    _shot(d, '2_reopened.png')
    r = _widget_report(d)
    assert _dialogs(d) == [], f'a dialog opened on reopening: {_dialogs(d)}'
    assert r['model_not_found'] == 0 and r['controls'] >= 1, r
    assert r['static_copies'] >= 1 and r['images'] >= 1, r
    assert 'Traceback' not in log.read_text(), log.read_text()[-3000:]
