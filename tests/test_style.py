"Lines of the package stay under 120 characters (CONTRIBUTING.md); nbdev's generated `__all__` lists are exempt."
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def long_lines(folder: Path, limit: int = 120) -> list:
    out = []
    for f in sorted(folder.rglob('*.py')):
        if f.name == '_modidx.py': continue
        in_all = False
        for i, line in enumerate(f.read_text().splitlines(), 1):
            in_all = line.startswith('__all__') or (in_all and line.startswith(' ' * 11))
            if len(line) > limit and not in_all: out.append(f"{f.relative_to(ROOT)}:{i} ({len(line)} characters)")
    return out


def test_package_lines_stay_under_120_characters():
    assert long_lines(ROOT / 'avlearn') == []


def test_the_line_check_can_fail(tmp_path):
    (tmp_path / 'x.py').write_text('y = 1\n' + 'z = "' + 'a' * 130 + '"\n')
    global ROOT
    old, ROOT = ROOT, tmp_path
    try: assert long_lines(tmp_path) == ['x.py:2 (136 characters)']
    finally: ROOT = old
