"""JupyterLab defaults for this environment (run by `make kernel`, which `make lab` and `make install` need).

Writes `<sys.prefix>/share/jupyter/lab/settings/overrides.d/avlearn.json`, JupyterLab's place for an environment's
default settings (a student's own choices in Settings still win):
- widgets: save widget state with the notebook, so a saved notebook's sliders and their last output draw again when
  it is reopened, instead of "Error displaying widget: model not found" (every widget cell also prints a static copy of
  its default view, `avlearn.core.static_copy`; see CONTRIBUTING.md);
- no pop-up asking to check for JupyterLab updates (nothing a student of this course should act on).
"""
import json, sys
from pathlib import Path

SETTINGS = {
    '@jupyter-widgets/jupyterlab-manager:plugin': {'saveState': True},
    '@jupyterlab/apputils-extension:notification': {'checkForUpdates': False, 'fetchNews': 'false'},
}


def overrides_path(prefix: str = sys.prefix) -> Path:
    return Path(prefix) / 'share' / 'jupyter' / 'lab' / 'settings' / 'overrides.d' / 'avlearn.json'


def main():
    p = overrides_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(SETTINGS, indent=2) + '\n', encoding='utf-8')
    print(f'JupyterLab defaults for avlearn written to {p}')


if __name__ == '__main__':
    main()
