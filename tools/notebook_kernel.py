"""Give every notebook under nbs/ the project's kernelspec, then clean it exactly as `nbdev_clean` does.

JupyterLab opens a notebook with the kernel its metadata names; a notebook with no kernelspec asks "Select Kernel" on
every first open, and saving it adds the kernelspec as a diff. `make lab` (and `make install`) register a kernel named
`avlearn` ("Python 3 (avlearn)") inside .venv; this script writes that name into the notebooks. nbdev_clean keeps the
`kernelspec` key (nbdev 2.4.14 keeps kernelspec, jekyll, jupytext, doc and widgets) but sets its `display_name` to its
`name`, so the notebooks carry `avlearn` in both; JupyterLab shows the installed kernel's display name.

Saved widget state (`metadata.widgets`) is dropped: committed notebooks carry no outputs, so the state would describe
widgets that are not there.

    python tools/notebook_kernel.py           # apply to every notebook (after adding or merging notebooks)
    python tools/notebook_kernel.py --check   # list notebooks that lack it; exit 1 if any
"""
import argparse, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNEL_NAME = 'avlearn'
KERNEL_DISPLAY_NAME = 'Python 3 (avlearn)'  # the installed kernel's name in JupyterLab's launcher and status bar
KERNELSPEC = {'name': KERNEL_NAME, 'display_name': KERNEL_NAME, 'language': 'python'}  # as nbdev_clean leaves it


def notebooks(root: Path = ROOT) -> list:
    "Every notebook under nbs/, skipping checkpoints and folders starting with '_' or '.' (as nbdev does)."
    nbs = root / 'nbs'
    return sorted(p for p in nbs.rglob('*.ipynb')
                  if not any(part.startswith(('_', '.')) for part in p.relative_to(nbs).parts[:-1]))


def needs_fix(nb: dict) -> list:
    "What is wrong with `nb`'s metadata (empty when nothing)."
    md, problems = nb.get('metadata', {}), []
    if md.get('kernelspec') != KERNELSPEC:
        problems.append(f"kernelspec is {md.get('kernelspec')!r}, not {KERNELSPEC!r}")
    if 'widgets' in md: problems.append('saved widget state in metadata.widgets')
    return problems


def fix(path: Path):
    "Set the kernelspec, drop widget state, and clean `path` as nbdev_clean would (same keys, same JSON layout)."
    from execnb.nbio import read_nb, write_nb
    from nbdev.clean import clean_nb
    from nbdev.config import get_config
    nb = read_nb(path)
    nb['metadata'].pop('widgets', None)
    nb['metadata']['kernelspec'] = dict(KERNELSPEC)
    cfg = get_config(path=path)
    clean_nb(nb, cfg.clear_all, cfg.get('allowed_metadata_keys').split(), cfg.get('allowed_cell_metadata_keys').split(),
             cfg.clean_ids)
    write_nb(nb, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--check', action='store_true', help='only report notebooks that need fixing; exit 1 if any')
    args = ap.parse_args(argv)
    bad = {p: needs_fix(json.loads(p.read_text(encoding='utf-8'))) for p in notebooks()}
    bad = {p: why for p, why in bad.items() if why}
    for p, why in bad.items():
        print(f"{p.relative_to(ROOT)}: {'; '.join(why)}", file=sys.stderr if args.check else sys.stdout)
        if not args.check: fix(p)
    if args.check and bad:
        print(f"{len(bad)} notebook(s) lack the {KERNEL_NAME!r} kernelspec: run `python tools/notebook_kernel.py`",
              file=sys.stderr)
        return 1
    if not args.check: print(f"{len(bad)} notebook(s) fixed, {len(notebooks())} checked")
    return 0


if __name__ == '__main__':
    sys.exit(main())
