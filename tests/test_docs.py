"""The course site in a real browser (`make test-docs`, after `make docs`): headless Debian Chromium, driven by selenium
as in tests/test_lab.py, opens the index and three notebook pages served over HTTP from _site/ and checks that
equations are typeset by MathJax (no raw TeX, no MathJax error), plots are images that decoded and are not blank, the
page logged no script error, and the site search finds a notebook. Screenshots go to _build/screenshots/ (or
AVLEARN_DOCS_SHOTS), the test's artefacts.

Runs only when asked (AVLEARN_TEST_DOCS=1, as `make test-docs` sets) and skips when chromium, chromium-driver or
selenium are missing (apt-get install chromium chromium-driver; pip install selenium) or the site is not built.
AVLEARN_DOCS_PAGES picks other pages (paths under _site/)."""
import os, re, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
from headless import chromium, free_port, wait   # tests/headless.py

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get('AVLEARN_SITE', ROOT / '_site'))
SHOTS = Path(os.environ.get('AVLEARN_DOCS_SHOTS', ROOT / '_build' / 'screenshots'))
PAGES = os.environ.get('AVLEARN_DOCS_PAGES', '03_losses.html 08_sinkhorn.html papers/21_gdt.html').split()

pytestmark = pytest.mark.skipif(os.environ.get('AVLEARN_TEST_DOCS') != '1',
                                reason='the site in a browser: make test-docs (AVLEARN_TEST_DOCS=1)')


@pytest.fixture(scope='module')
def site():
    "_site/ over HTTP on a free local port (the page paths are those a web server gives)."
    if not (SITE / 'index.html').exists(): pytest.skip(f'no site in {SITE}: run make docs')
    port = free_port()
    proc = subprocess.Popen([sys.executable, '-m', 'http.server', str(port), '--bind', '127.0.0.1', '--directory',
                             str(SITE)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f'http://127.0.0.1:{port}'
    try:
        wait('the web server', lambda: urllib.request.urlopen(base + '/index.html', timeout=5).status == 200, 30)
        yield base
    finally:
        proc.terminate(); proc.wait(10)


@pytest.fixture(scope='module')
def browser():
    driver = chromium('make test-docs', '1300,1000', browser_log=True)
    try: yield driver
    finally: driver.quit()


def _js(d, script, *args): return d.execute_script(script, *args)


# MathJax 2 probes for fonts it does not need (jupyter-server-mathjax ships the STIX web fonts, MathJax also tries
# its TeX .otf files and an about:blank font): those failed font loads are expected and are not script errors
_FONT_PROBE = re.compile(r"(\.otf|\.woff2?)(\?\S*)? - Failed to load resource|Access to font at 'about:blank'|"
                         r"^about:blank - Failed to load resource")


def _errors(d) -> list:
    "Script errors and failed loads the page logged (the browser log's SEVERE entries), less MathJax's font probes."
    return [e['message'][:300] for e in d.get_log('browser') if e['level'] == 'SEVERE'
            and not _FONT_PROBE.search(e['message'])]


def _shot(d, name):
    SHOTS.mkdir(parents=True, exist_ok=True); d.save_screenshot(str(SHOTS / name))


def _open(d, url):
    d.get(url)
    wait('the page', lambda: _js(d, "return document.readyState === 'complete'"), 60)


def _math(d) -> dict:
    "Wait until MathJax has typeset the page, then count typeset equations, errors and TeX left raw."
    wait('MathJax to load', lambda: _js(d, 'return !!(window.MathJax && MathJax.Hub)'), 60)
    wait('MathJax to finish', lambda: _js(d, """
        if (!window.__mjDone) { window.__mjDone = false; MathJax.Hub.Queue(() => { window.__mjDone = true; }); }
        return window.__mjDone;"""), 120)
    return _js(d, """
        const md = [...document.querySelectorAll('.jp-RenderedMarkdown')].map(e => e.innerText).join('\\n');
        return {typeset: document.querySelectorAll('.MathJax, .MathJax_SVG, .MathJax_CHTML, mjx-container').length,
                errors: document.querySelectorAll('.MathJax_Error, merror, .mjx-merror').length,
                raw: (md.match(/\\$\\$?[^$\\n]*\\\\[a-zA-Z]+[^$\\n]*\\$/g) || []).slice(0, 5)};""")


def _images(d) -> list:
    "Every output image: decoded size and the spread of its pixel values (0: a blank image)."
    return _js(d, """
        return [...document.querySelectorAll('.jp-OutputArea-output img')].map(img => {
            const c = document.createElement('canvas'), w = Math.min(img.naturalWidth, 400),
                  h = Math.min(img.naturalHeight, 400);
            if (!w || !h) return {w: img.naturalWidth, h: img.naturalHeight, spread: 0};
            c.width = w; c.height = h; const g = c.getContext('2d'); g.drawImage(img, 0, 0, w, h);
            const px = g.getImageData(0, 0, w, h).data; let lo = 255, hi = 0;
            for (let i = 0; i < px.length; i += 4) { const v = (px[i] + px[i + 1] + px[i + 2]) / 3;
                lo = Math.min(lo, v); hi = Math.max(hi, v); }
            return {w: img.naturalWidth, h: img.naturalHeight, spread: hi - lo};
        });""")


def test_index_and_search(site, browser):
    d = browser
    _open(d, site + '/index.html')
    assert 'avlearn' in d.title
    links = _js(d, "return [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'))")
    for page in PAGES: assert any(l and l.endswith(page.split('/')[-1]) for l in links), f'{page} not in the nav'
    _shot(d, '0_index.png')
    # the site search (Material's lunr index in a web worker) finds the Sinkhorn notebook
    _js(d, "const t = document.querySelector('[data-md-toggle=search]'); t.checked = true; "
           "t.dispatchEvent(new Event('change'))")
    box = wait('the search box', lambda: (lambda b: b if b.is_displayed() else None)(
        d.find_element('css selector', 'input.md-search__input')), 10)
    box.click(); box.send_keys('Sinkhorn-Knopp')
    hits = wait('search results', lambda: _js(
        d, "return [...document.querySelectorAll('.md-search-result__item a')].map(a => a.getAttribute('href'))"), 60)
    _shot(d, '0_search.png')
    assert any('08_sinkhorn' in h for h in hits), hits
    errs = _errors(d)
    assert errs == [], "\n".join(errs)


@pytest.mark.parametrize('page', PAGES)
def test_notebook_page(site, browser, page):
    d = browser
    _open(d, f'{site}/{page}')
    m = _math(d)
    assert m['typeset'] >= 3 and m['errors'] == 0 and m['raw'] == [], m
    imgs = _images(d)
    assert imgs, f'{page}: no plot'
    assert all(i['w'] >= 100 and i['h'] >= 50 and i['spread'] > 50 for i in imgs), imgs
    first = d.find_elements('css selector', '.jp-OutputArea-output img')[0]
    name = page.replace('/', '_').replace('.html', '')
    _shot(d, f'{name}_top.png')
    _js(d, "arguments[0].scrollIntoView({block: 'center'})", first); time.sleep(0.5)
    _shot(d, f'{name}_plot.png')
    cells = _js(d, "return document.querySelectorAll('.jp-Cell').length")
    assert cells > 5
    tracebacks = _js(d, "return document.querySelectorAll('.jp-OutputArea-output[data-mime-type*=\"error\"], "
                        ".jp-RenderedText[data-mime-type=\"application/vnd.jupyter.stderr\"] .ansi-red-fg').length")
    assert tracebacks == 0, f'{page} shows an error output'
    errs = _errors(d)
    assert errs == [], "\n".join(errs)
