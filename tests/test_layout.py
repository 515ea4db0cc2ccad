"""The three floors and one door (CONTRIBUTING.md): foundations never import the engine or papers; the engine never
names a paper; papers import foundations and the engine's method interface only (or a base paper they declare in
`EXTENDS`); no private name crosses a module border. And every `avlearn-*` command quoted in the notebooks, README and
CONTRIBUTING parses."""
import ast, configparser, importlib, re, shlex
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'avlearn'


def _modules():
    for f in sorted(PKG.rglob('*.py')):
        if f.name in ('_modidx.py', '__init__.py') or '__pycache__' in f.parts: continue
        rel = f.relative_to(PKG)
        yield f, '.'.join(['avlearn', *rel.with_suffix('').parts])


def _floor(mod: str) -> str:
    parts = mod.split('.')
    return parts[1] if len(parts) > 2 and parts[1] in ('engine', 'papers') else 'foundation'


def _imports(f: Path, mod: str):
    "(imported module, names) for every import of avlearn code in file `f` (module `mod`), relative ones resolved."
    pkg = mod.split('.')[:-1]
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level: base = '.'.join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            if base == 'avlearn' or base.startswith('avlearn.'):
                yield base, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith('avlearn'): yield a.name, []


def _extends(f: Path) -> tuple:
    for node in ast.parse(f.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == 'EXTENDS' for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    return ()


def layout_violations() -> list:
    bad = []
    for f, mod in _modules():
        floor = _floor(mod)
        for base, names in _imports(f, mod):
            private = [n for n in names if n.startswith('_') and not n.startswith('__')]
            if private: bad.append(f"{mod} imports private {private} from {base}")
            if floor == 'foundation' and _floor(base + '.x') != 'foundation':
                bad.append(f"foundation {mod} imports {base}")
            if floor == 'engine' and base.startswith('avlearn.papers.'): bad.append(f"engine {mod} names a paper: {base}")
            if floor == 'papers':
                if base.startswith('avlearn.engine') and base != 'avlearn.engine.method':
                    bad.append(f"paper {mod} imports {base} (papers use the engine's method interface only)")
                if base.startswith('avlearn.papers.') and base.split('.')[2] not in _extends(f):
                    bad.append(f"paper {mod} imports paper {base} without declaring it in EXTENDS")
    return bad


def test_imports_follow_the_layout():
    assert layout_violations() == []


def test_the_checker_catches_violations(tmp_path, monkeypatch):
    "The rule test can fail: a foundation importing the engine, a paper importing the trainer and a private name."
    fake = tmp_path / 'avlearn'; (fake / 'papers').mkdir(parents=True)
    (fake / 'losses.py').write_text('from .engine.trainer import train\n')
    (fake / 'papers' / 'x.py').write_text('from ..engine.trainer import Trainer\nfrom ..dist import _row_counts\n'
                                          'from .avid_cma import AVIDCMA\n')
    monkeypatch.setattr(__import__(__name__), 'PKG', fake)
    bad = layout_violations()
    assert any('foundation avlearn.losses imports avlearn.engine.trainer' in b for b in bad)
    assert any('papers use the engine' in b for b in bad) and any("private ['_row_counts']" in b for b in bad)
    assert any('without declaring it in EXTENDS' in b for b in bad)


def test_every_paper_is_a_method_by_convention():
    "A method name maps to avlearn.papers.<name>: each paper module registers the method named after it."
    from avlearn.engine.method import get_method, paper_modules
    for name in paper_modules():
        assert get_method(name).name == name


# ---------- commands quoted to users ----------
def _code_spans(text: str, is_code: bool) -> list:
    "Lines of code: a code cell's lines; in markdown, fenced blocks' lines and inline `code` spans (not prose)."
    text = re.sub(r'\\\n\s*', ' ', text)                         # shell line continuations
    if is_code: return text.splitlines()
    fenced = re.findall(r'```[a-z]*\n(.*?)```', text, flags=re.S)
    rest = re.sub(r'```.*?```', '', text, flags=re.S)
    return [l for block in fenced for l in block.splitlines()] + re.findall(r'`([^`\n]+)`', rest)


def _sources():
    import nbformat
    for nb in sorted((ROOT / 'nbs').rglob('*.ipynb')):
        if '.ipynb_checkpoints' in nb.parts: continue
        for c in nbformat.read(nb, as_version=4).cells:
            yield str(nb.relative_to(ROOT)), _code_spans(c.source, c.cell_type == 'code')
    for md in ('README.md', 'CONTRIBUTING.md'): yield md, _code_spans((ROOT / md).read_text(), False)


def _scripts() -> dict:
    "The console scripts of settings.ini: {'avlearn-train': 'avlearn.engine.cli:train_cli', ...}."
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    return dict(s.split('=') for s in cfg['DEFAULT']['console_scripts'].split())


CMD = re.compile(r'(?<![\w-])(' + '|'.join(sorted(map(re.escape, _scripts()), key=len, reverse=True)) + r')\b')


def quoted_commands() -> list:
    "(where, command, argv) for every avlearn-* command with arguments in code blocks, inline code and code cells."
    out = []
    for where, spans in _sources():
        for span in spans:
            m = CMD.search(span)
            if not m or '#' in span[:m.start()]: continue                  # inside a comment: prose
            rest = span[m.end():].split(' #')[0]
            if rest.startswith(')'): rest = rest[1:]                   # $(which avlearn-train) --config ...
            try: argv = shlex.split(rest)
            except ValueError: continue
            if argv: out.append((where, m.group(0), argv))              # a bare mention is not a command line
    return out


def _entry(cmd: str):
    mod, fn = _scripts()[cmd].split(':')
    return getattr(importlib.import_module(mod), fn)


def test_quoted_commands_parse():
    from fastcore.script import anno_parser
    cmds = quoted_commands()
    assert len(cmds) >= 10, cmds
    bad = []
    for where, cmd, argv in cmds:
        f = _entry(cmd)
        parser = anno_parser(getattr(f, '__wrapped__', f))
        positional = any(not a.option_strings for a in parser._actions)
        if not positional and not argv[0].startswith('-'): continue     # "avlearn-train checkpoints and exits": prose
        try: args = parser.parse_args([a for a in argv if not a.startswith('$')])
        except SystemExit: bad.append(f"{where}: {cmd} {' '.join(argv)}"); continue
        if cmd == 'avlearn-train' and getattr(args, 'config', None) and '$' not in args.config:
            from avlearn.engine.config import load_config
            config = args.config if '/' not in args.config or not args.config.startswith('configs') else str(ROOT / args.config)
            try: load_config(config, [s for s in (args.set or []) if '$' not in s])
            except Exception as e: bad.append(f"{where}: {cmd} {' '.join(argv)}: {e}")
        if cmd == 'avlearn-reproduce':
            from avlearn.engine.method import paper_modules
            unknown = [p for p in args.papers if p not in paper_modules() and not p.startswith('<')]
            if unknown: bad.append(f"{where}: {cmd} {' '.join(argv)}: unknown paper(s) {unknown}")
    assert not bad, '\n'.join(bad)


def test_the_command_check_can_fail():
    from fastcore.script import anno_parser
    f = _entry('avlearn-train')
    with pytest.raises(SystemExit): anno_parser(getattr(f, '__wrapped__', f)).parse_args(['--dry-run'])
