"""Notebook budgets and executed copies for nbval runs (a pytest plugin that conftest.py loads).

- At the end of a run it prints each notebook's run time (kernel start, every cell, kernel stop), slowest first, and
  the CPU time its kernel used (on a loaded machine the wall time grows, the CPU time much less).
- With `--nb-budget 120` (as `make test`, and so CI, runs it), a notebook whose default path (a run without
  --run-slow) takes longer than 120 s fails: an error on its last cell names the time. 120 s is the limit on CI's 2
  cores; the target stays 90 s (CONTRIBUTING.md). Without the option (a single notebook run by hand on a loaded
  machine) the times are only printed.
- `--save-executed DIR` writes each notebook that ran with the outputs nbval saw to DIR/<its path under nbs/>, plus
  DIR/timings.json, so that the course site (tools/build_docs.py) shows the outputs of the test run instead of running
  every notebook a second time. Cells skipped by a flag (`#| slow`, `#| cuda`) get a one-line note as their output.
  Its kernels draw figures as in Jupyter (matplotlib's inline backend, not the Agg of MPLBACKEND) so that the saved
  outputs hold the plots.
"""
import json, os, time
from pathlib import Path
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    group = parser.getgroup('avlearn notebooks')
    group.addoption('--nb-budget', type=float, default=0.0,
                    help='fail a notebook whose run (without --run-slow) takes longer than this many seconds '
                         '(make test: 120; default 0: only print the times)')
    group.addoption('--save-executed', default=None, metavar='DIR',
                    help='write every notebook that ran, with its outputs, under DIR (for tools/build_docs.py)')


def pytest_configure(config):
    config.pluginmanager.register(NotebookTimer(config), 'avlearn-notebook-timer')


def _is_cell(item) -> bool: return getattr(item, 'cell', None) is not None and hasattr(item, 'cell_num')


def _skip_note(item) -> str | None:
    m = item.get_closest_marker('skip')
    return m.kwargs.get('reason', m.args[0] if m.args else 'skipped') if m else None


class NotebookTimer:
    def __init__(self, config):
        self.config = config
        self.budget = config.getoption('--nb-budget')
        if config.getoption('--run-slow', default=False): self.budget = 0   # the slow path has no budget
        self.out = config.getoption('--save-executed')
        self.seconds: dict[str, float] = {}     # notebook path (relative to the root) -> seconds so far
        self.last: dict[str, str] = {}          # notebook path -> node id of its last cell
        self.over: dict[str, float] = {}
        self.cpu: dict[str, float] = {}         # notebook path -> CPU seconds of its kernel process

    @staticmethod
    def _nb(nodeid: str) -> str: return nodeid.split('::', 1)[0]

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        for item in items:
            if _is_cell(item): self.last[self._nb(item.nodeid)] = item.nodeid

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item):
        "With --save-executed, a notebook's kernel (started in its first cell's setup) uses the inline backend."
        if not (self.out and _is_cell(item) and item.parent.kernel is None):
            yield; return
        old = os.environ.get('MPLBACKEND')
        os.environ['MPLBACKEND'] = 'module://matplotlib_inline.backend_inline'
        try: yield
        finally:
            if old is None: os.environ.pop('MPLBACKEND', None)
            else: os.environ['MPLBACKEND'] = old

    def pytest_runtest_logreport(self, report):
        nb = self._nb(report.nodeid)
        if nb in self.last: self.seconds[nb] = self.seconds.get(nb, 0.0) + report.duration

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item):
        "Read the kernel's CPU time before the last cell's teardown stops it."
        nb = self._nb(item.nodeid)
        if self.last.get(nb) == item.nodeid:
            try:
                import psutil
                t = psutil.Process(item.parent.kernel.km.provisioner.pid).cpu_times()
                self.cpu[nb] = t.user + t.system + t.children_user + t.children_system
            except Exception: pass
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        rep = outcome.get_result()
        nb = self._nb(item.nodeid)
        if rep.when != 'teardown' or self.last.get(nb) != item.nodeid: return
        total = self.seconds.get(nb, 0.0) + rep.duration
        if self.out: self._save(item, nb, total)
        if self.budget and total > self.budget:
            self.over[nb] = total
            if rep.passed:
                rep.outcome = 'failed'
                rep.longrepr = (f'{nb}: its default path ran {total:.0f} s, over the {self.budget:g} s budget on CI '
                                f'(target 90 s): move long cells behind `#| slow` or make them smaller')

    def _save(self, item, nb: str, total: float):
        cells = {i.cell_num: i for i in item.parent.session.items if _is_cell(i) and i.parent is item.parent}
        copy = nbformat.from_dict(json.loads(json.dumps(item.parent.nb)))
        n = 0
        for cell in copy.cells:
            if cell.cell_type != 'code': continue
            it = cells.get(n); n += 1
            outs = getattr(it, 'test_outputs', None) if it is not None else None
            if outs is None:
                note = _skip_note(it) if it is not None else None
                cell.outputs = [nbformat.v4.new_output('stream', name='stdout', text=f'[not run here: {note}]\n')] \
                    if note else []
                cell.execution_count = None
                continue
            cell.outputs = [nbformat.from_dict(json.loads(json.dumps(o))) for o in outs]
            cell.execution_count = n
            for o in cell.outputs:
                if o.output_type == 'execute_result': o.execution_count = n
        rel = Path(item.parent.path).resolve().relative_to(ROOT / 'nbs') if str(item.parent.path).startswith(
            str(ROOT / 'nbs')) else Path(Path(item.parent.path).name)
        dest = Path(self.out) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        when = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
        copy.metadata.setdefault('avlearn', {})['executed'] = {'seconds': round(total, 1), 'by': 'nbval', 'when': when}
        nbformat.write(copy, dest)
        timings = Path(self.out) / 'timings.json'
        t = json.loads(timings.read_text()) if timings.exists() else {}
        t[str(rel)] = {
            'wall_s': round(total, 1), 'kernel_cpu_s': round(self.cpu[nb], 1) if nb in self.cpu else None}
        timings.write_text(json.dumps(dict(sorted(t.items())), indent=1) + '\n')

    def pytest_terminal_summary(self, terminalreporter):
        done = {nb: s for nb, s in self.seconds.items() if nb in self.last}
        if not done: return
        tr = terminalreporter
        limit = f'budget {self.budget:g} s' if self.budget else 'no budget checked'
        tr.write_sep('=', f'notebook run times ({limit}; target 90 s)')
        for nb, s in sorted(done.items(), key=lambda kv: -kv[1]):
            cpu = f'{self.cpu[nb]:7.1f} s CPU' if nb in self.cpu else ' ' * 13
            tr.write_line(f'{s:7.1f} s {cpu}  {nb}' + ('   OVER BUDGET' if nb in self.over else ''))
        tr.write_line(f'{sum(done.values()):7.1f} s  all {len(done)} notebooks')
