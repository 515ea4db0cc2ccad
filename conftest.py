"""Shared pytest set-up for `tests/` and for nbval runs over `nbs/`.

Cells and tests carry nbdev's test flags (settings.ini `tst_flags = slow cuda multigpu`):
- a notebook cell whose first lines hold `#| slow`, `#| cuda` or `#| multigpu` is skipped under nbval unless asked for;
- a test marked `@pytest.mark.slow` / `cuda` / `multigpu` likewise.
`--run-slow` runs slow ones; cuda and multigpu ones run when the machine has the GPUs.
Tests marked `lab` (JupyterLab in a headless browser, `make test-lab`) run only with `--run-lab`.

Notebooks name the `avlearn` kernel (tools/notebook_kernel.py), which `make kernel` registers for JupyterLab; nbval
runs them in the interpreter running pytest instead (`--nbval-current-env`), so a fresh clone's tests need no
registered kernel. `--nbval-kernel-name NAME` still picks a kernel by name.
"""
import os, re
import pytest

# notebook run times, the 120 s budget per notebook and --save-executed (tools/pytest_notebooks.py)
pytest_plugins = ['tools.pytest_notebooks']

os.environ.setdefault('MPLBACKEND', 'Agg')
os.environ.setdefault('PYTHONHASHSEED', '0')

_FLAG_RE = re.compile(r'^\s*#\s*\|\s*(slow|cuda|multigpu)\b', re.M)


def pytest_addoption(parser):
    parser.addoption('--run-slow', action='store_true', default=False, help='also run cells/tests flagged slow')
    parser.addoption('--run-lab', action='store_true', default=False,
                     help='also run the JupyterLab browser test (make test-lab)')


def pytest_configure(config):
    for flag in ('slow', 'cuda', 'multigpu'):
        config.addinivalue_line('markers', f'{flag}: nbdev test flag {flag}')
    config.addinivalue_line('markers', 'lab: JupyterLab in headless Chromium (runs with --run-lab: make test-lab)')
    opt = config.option
    if hasattr(opt, 'nbval_current_env') and not getattr(opt, 'nbval_kernel_name', None) \
            and not getattr(opt, 'current_env', False):
        opt.nbval_current_env = True


def _cuda_count():
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:
        return 0


def _skip_reason(flags, config):
    if 'slow' in flags and not config.getoption('--run-slow'): return 'slow (use --run-slow / make test-slow)'
    if 'cuda' in flags and _cuda_count() < 1: return 'needs CUDA'
    if 'multigpu' in flags and _cuda_count() < 2: return 'needs 2+ GPUs'
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        cell = getattr(item, 'cell', None)  # nbval cell items
        if cell is not None:
            head = '\n'.join(cell.source.splitlines()[:5])
            flags = set(_FLAG_RE.findall(head))
        else:
            flags = {m.name for m in item.iter_markers() if m.name in ('slow', 'cuda', 'multigpu')}
        reason = _skip_reason(flags, config) if flags else None
        if cell is None and item.get_closest_marker('lab') and not config.getoption('--run-lab'):
            reason = 'JupyterLab browser test (use --run-lab / make test-lab)'
        if reason: item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def gloo():
    """The one harness for multi-process tests: `gloo(fn, world, *args, start_method='fork')` runs `fn(rank, world,
    *args)` on `world` processes joined by gloo on a free port (avlearn.dist.launch) and raises any process's error."""
    from avlearn.dist import launch
    return launch
