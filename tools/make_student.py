"""Student copies of the notebooks (`make student`): every solution removed by nbgrader's own preprocessors.

Solutions live in the source notebooks between `### BEGIN SOLUTION` and `### END SOLUTION` (nbgrader's markers,
indented as the code around them). nbgrader's ClearSolutions replaces each region with

    # YOUR CODE HERE
    raise NotImplementedError()

(`YOUR ANSWER HERE` in a markdown cell), ClearHiddenTests drops `### BEGIN HIDDEN TESTS` regions and ClearOutput
clears outputs. nbdev_clean strips nbgrader's cell metadata from the sources, so the markers alone mark a solution
(`enforce_metadata=False`); everything else in a notebook is copied unchanged, in the same layout as nbs/ (relative
paths such as `../configs` still resolve).

Usage: python tools/make_student.py [--out student] [NOTEBOOK ...]     (default: every notebook under nbs/)
"""
import argparse, copy, sys
from pathlib import Path
import nbformat
from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
BEGIN, END = '### BEGIN SOLUTION', '### END SOLUTION'
CODE_STUB = '# YOUR CODE HERE\nraise NotImplementedError()'


def preprocessors():
    return [ClearSolutions(enforce_metadata=False, begin_solution_delimeter=BEGIN[4:], end_solution_delimeter=END[4:],
                           code_stub={'python': CODE_STUB}),
            ClearHiddenTests(enforce_metadata=False), ClearOutput()]


def student_copy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    "The student version of a solution notebook (a new notebook; `nb` is left as it is)."
    nb, resources = copy.deepcopy(nb), {}
    for p in preprocessors(): nb, resources = p.preprocess(nb, resources)
    return nb


def notebooks(paths=None) -> list:
    return [Path(p).resolve() for p in paths] if paths else sorted(p for p in NBS.rglob('*.ipynb')
                                                                   if '.ipynb_checkpoints' not in p.parts)


def write_student(out: Path, paths=None) -> list:
    "Write the student copy of each notebook under `out` (nbs/x/y.ipynb -> out/x/y.ipynb); return what was written."
    written = []
    for src in notebooks(paths):
        dest = Path(out) / src.relative_to(NBS)
        dest.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(student_copy(nbformat.read(src, as_version=4)), dest)
        written.append(dest)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default=str(ROOT / 'student'), help='folder for the student copies (default: student/)')
    ap.add_argument('notebooks', nargs='*', help='notebooks under nbs/ (default: all)')
    a = ap.parse_args(argv)
    written = write_student(Path(a.out), a.notebooks)
    n_ex = sum(c.source.count('raise NotImplementedError()') for p in written for c in nbformat.read(p, 4).cells)
    print(f'wrote {len(written)} student notebooks to {a.out} ({n_ex} solutions replaced by a stub)')


if __name__ == '__main__':
    sys.exit(main())
