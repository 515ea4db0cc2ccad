"""Student copies (`make student`, tools/make_student.py): nbgrader removes every solution region and nothing else,
and a student copy runs as a student meets it: everything before the exercises runs, each exercise cell stops with
nbgrader's `raise NotImplementedError()` until it is solved.

The solution notebooks themselves run under nbval in `make test`. The executed check runs one small notebook
(AVLEARN_STUDENT_NOTEBOOK picks another)."""
import os, re, sys
from pathlib import Path
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
from make_student import BEGIN, CODE_STUB, END, NBS, notebooks, student_copy, write_student  # noqa: E402

NOTEBOOK = os.environ.get('AVLEARN_STUDENT_NOTEBOOK', 'papers/28_compositional.ipynb')
_FLAG_RE = re.compile(r'^\s*#\s*\|\s*(slow|cuda|multigpu)\b', re.M)


def _expected(source: str, stub: str) -> tuple[str, int]:
    "The source with each solution region replaced by the stub at the region's indentation (an independent oracle)."
    out, inside, n = [], False, 0
    for line in source.split('\n'):
        if BEGIN in line:
            indent = line[:len(line) - len(line.lstrip())]
            out += [indent + s for s in stub.split('\n')]; inside, n = True, n + 1
        elif END in line: inside = False
        elif not inside: out.append(line)
    assert not inside, f'a solution region is not closed:\n{source}'
    return '\n'.join(out), n


@pytest.mark.parametrize('path', notebooks(), ids=lambda p: str(p.relative_to(NBS)))
def test_student_copy_removes_exactly_the_solutions(path):
    src = nbformat.read(path, as_version=4)
    stu = student_copy(src)
    assert len(stu.cells) == len(src.cells)
    for i, (a, b) in enumerate(zip(src.cells, stu.cells)):
        assert a.cell_type == b.cell_type
        assert BEGIN not in b.source and END not in b.source, f'cell {i} keeps a solution marker'
        want, n = _expected(a.source, CODE_STUB if a.cell_type == 'code' else 'YOUR ANSWER HERE')
        assert b.source == want, f'cell {i}: the student copy should differ from the source only in its solutions'
        if n: assert b.source.count('raise NotImplementedError()' if a.cell_type == 'code' else 'YOUR ANSWER') >= n
        if b.cell_type == 'code': assert b.outputs == [] and b.execution_count is None
    assert src.cells == nbformat.read(path, as_version=4).cells, 'making the copy must not change the source'


def test_make_student_writes_every_notebook(tmp_path):
    written = write_student(tmp_path / 'student')
    assert sorted(p.relative_to(tmp_path / 'student') for p in written) == \
        sorted(p.relative_to(NBS) for p in notebooks())
    has = [p for p in notebooks() if BEGIN in p.read_text()]
    assert has, 'some notebooks have exercises with solutions'
    for p in has:
        assert 'NotImplementedError' in (tmp_path / 'student' / p.relative_to(NBS)).read_text()


def test_student_copy_runs_until_its_exercises(tmp_path):
    "Execute one student copy: every cell before the first exercise runs cleanly, every exercise cell raises."
    from nbclient import NotebookClient
    src = nbformat.read(NBS / NOTEBOOK, as_version=4)
    exercises = {i for i, c in enumerate(src.cells) if c.cell_type == 'code' and BEGIN in c.source}
    assert exercises, f'{NOTEBOOK} has no exercise'
    [dest] = write_student(tmp_path / 'student', [NBS / NOTEBOOK])
    nb = nbformat.read(dest, as_version=4)
    for c in nb.cells:   # as under nbval: flagged cells (slow, cuda) are not run
        if c.cell_type == 'code' and _FLAG_RE.search('\n'.join(c.source.splitlines()[:5])): c.source = '# skipped'
    cwd = str((NBS / NOTEBOOK).parent)                      # relative paths resolve as under nbval
    NotebookClient(nb, timeout=600, allow_errors=True, kernel_name='python3',
                   resources={'metadata': {'path': cwd}}).execute()
    errors = {i: [o.ename for o in c.outputs if o.output_type == 'error']
              for i, c in enumerate(nb.cells) if c.cell_type == 'code'}
    first = min(exercises)
    before = {i: e for i, e in errors.items() if i < first and e}
    assert before == {}, f'cells before the first exercise failed: {before}'
    for i in sorted(exercises):
        assert 'NotImplementedError' in errors[i], f'exercise cell {i} should stop at the stub, got {errors[i]}'
