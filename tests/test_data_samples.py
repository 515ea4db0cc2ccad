"data_samples/ is real mp4 media made by one documented command, and that command reproduces it."
import csv, subprocess, sys
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / 'data_samples'
CMD = ['--out', None, '--n', '24', '--seed', '0', '--n_frames', '32']   # as README and `make samples` say


def _rows(p): return list(csv.DictReader(open(p, encoding='utf-8')))


def test_samples_are_small_and_complete():
    rows = _rows(SAMPLES / 'manifest.csv')
    assert len(rows) == 24
    assert sum(f.stat().st_size for f in SAMPLES.iterdir()) < 5 * 2 ** 20
    assert all((SAMPLES / r['path']).stat().st_size > 1000 for r in rows)
    assert '--n 24 --seed 0 --n_frames 32' in (ROOT / 'README.md').read_text()


def test_samples_regenerate_label_for_label(tmp_path):
    cmd = [str(Path(sys.executable).parent / 'avlearn-toyworld'), *CMD]; cmd[2] = str(tmp_path)
    subprocess.run(cmd, check=True, capture_output=True)
    assert (tmp_path / 'manifest.csv').read_text() == (SAMPLES / 'manifest.csv').read_text()
    from avlearn.media import read_clip
    for r in _rows(SAMPLES / 'manifest.csv')[:3]:
        a, b = (read_clip(d / r['path'], 0.0, 2.0, fps=16, sample_rate=16000) for d in (SAMPLES, tmp_path))
        assert a['video'].shape == b['video'].shape == (3, 32, 64, 64)
        assert (a['video'] - b['video']).abs().mean() < 0.02      # H.264 may differ in a few bits, not in content
        assert (a['audio'] - b['audio']).abs().max() < 1e-3
