"The GPU benchmark script is prepared in advance: its CPU smoke run goes through every part and writes its JSON."
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_cpu_smoke(tmp_path):
    out = tmp_path / 'gpu.json'
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'gpu.py'), '--cpu-smoke', '--out', str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    for part in ('train_step', 'sinkhorn', 'attention'): assert 'error' not in res[part], res[part]
    assert res['train_step']['videos_per_s']['fp32'] > 0 and res['sinkhorn']['per_iter_over_floor'] > 0
    assert [row['N'] for row in res['attention']['rows']] == [256, 512]
