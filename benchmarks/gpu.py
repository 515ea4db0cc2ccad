"""Everything that needs a GPU, in one prepared run of at most 10 minutes on one GPU; writes one JSON file.

1. the `cuda`-flagged tests (`pytest -m cuda tests`);
2. train-step throughput of GDT at paper shapes: fp32, bf16 autocast, bf16 + channels_last_3d, bf16 + torch.compile
   (`benchmarks/train_step.py`);
3. Sinkhorn at N = 1M, K = 3000 against the device's floor of two matrix-vector products over the same kernel, and
   the host synchronisations per iteration (counted with torch's sync debug mode);
4. exact attention (fused SDPA) vs Orthoformer: time and peak memory at 16k to 64k tokens.

    python benchmarks/gpu.py --out benchmarks/gpu_results.json          # on a GPU
    python benchmarks/gpu.py --cpu-smoke --out /tmp/gpu_smoke.json       # the same code paths, tiny, on a CPU
"""
import argparse, json, subprocess, sys, time, warnings
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, device, repeat=3):
    "Median seconds of `fn()` over `repeat` runs after one warm-up, and the peak memory (bytes, CUDA only)."
    fn()
    if device.type == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter(); fn()
        if device.type == 'cuda': torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device.type == 'cuda' else None
    return sorted(times)[len(times) // 2], peak


def cuda_tests(smoke: bool) -> dict:
    if smoke: return dict(skipped='cpu smoke run')
    r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-m', 'cuda or multigpu',
                        'tests'], cwd=ROOT, capture_output=True, text=True, timeout=240)
    return dict(returncode=r.returncode, summary=r.stdout.strip().splitlines()[-1:] if r.stdout else [])


def train_step(smoke: bool) -> dict:
    out = Path('/tmp') / f'avlearn_train_step_{int(time.time())}.json'
    args = [sys.executable, str(ROOT / 'benchmarks' / 'train_step.py'), '--json', str(out)]
    if smoke: args += ['--batch', '1', '--steps', '1', '--no_compile', '--set', 'data.size=32', 'data.clip_duration=1.0',
                       'model.video=tiny_r2plus1d', 'model.audio=tiny_audio', 'model.video_args={width: 4}',
                       'model.audio_args={width: 4}', 'method_args.window_s=0.5']
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if r.returncode: return dict(error=r.stderr[-2000:])
    return json.loads(out.read_text())


def sinkhorn(device, smoke: bool) -> dict:
    from avlearn.sinkhorn import sinkhorn_knopp
    N, K = (4096, 64) if smoke else (1 << 20, 3000)
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(N, K, device=device, generator=g) * 2
    res = {}
    t, peak = timed(lambda: res.__setitem__('r', sinkhorn_knopp(logits, lam=20., return_assignments=False)), device, 2)
    r = res['r']
    P = torch.softmax(logits * 20., 1)       # a kernel of the same shape: the floor is two passes over it
    u, v = torch.rand(N, device=device), torch.rand(K, device=device)
    floor, _ = timed(lambda: (P.t() @ u, P @ v), device, 5)
    syncs = 0
    if device.type == 'cuda':
        torch.cuda.set_sync_debug_mode('warn')
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always'); sinkhorn_knopp(logits, lam=20., return_assignments=False)
        torch.cuda.set_sync_debug_mode('default'); syncs = len(w)
    return dict(N=N, K=K, seconds=t, n_iter=r.n_iter, marginal_error=r.error, seconds_per_iter=t / max(1, r.n_iter),
                two_matvec_floor_s=floor, per_iter_over_floor=t / max(1, r.n_iter) / floor,
                host_syncs=syncs, host_syncs_per_iter=syncs / max(1, r.n_iter), peak_bytes=peak)


def attention(device, smoke: bool) -> dict:
    from avlearn.attention import exact_attention, orthoformer_attention
    dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32
    out = []
    for N in ((256, 512) if smoke else (16384, 32768, 65536)):
        q, k, v = (torch.randn(1, 8, N, 64, device=device, dtype=dtype) for _ in range(3))
        te, me = timed(lambda: exact_attention(q, k, v), device)
        to, mo = timed(lambda: orthoformer_attention(q, k, v, n_prototypes=64), device)
        out.append(dict(N=N, exact_s=te, orthoformer_s=to, speedup=te / to, exact_peak_bytes=me, orthoformer_peak_bytes=mo))
        print(f"attention N={N}: exact {te * 1e3:.1f} ms, orthoformer-64 {to * 1e3:.1f} ms ({te / to:.2f}x)", flush=True)
    return dict(dtype=str(dtype), heads=8, dim=64, rows=out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'gpu_results.json'))
    p.add_argument('--cpu-smoke', action='store_true', help='tiny shapes on the CPU: checks the script, measures nothing')
    a = p.parse_args(argv)
    if not a.cpu_smoke and not torch.cuda.is_available(): p.error('no CUDA GPU here; use --cpu-smoke to check the script')
    device = torch.device('cpu' if a.cpu_smoke else 'cuda')
    t0, res = time.perf_counter(), dict(device=torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu',
                                        torch=torch.__version__, smoke=a.cpu_smoke)
    for name, fn in [('cuda_tests', lambda: cuda_tests(a.cpu_smoke)), ('train_step', lambda: train_step(a.cpu_smoke)),
                     ('sinkhorn', lambda: sinkhorn(device, a.cpu_smoke)), ('attention', lambda: attention(device, a.cpu_smoke))]:
        t = time.perf_counter()
        try: res[name] = fn()
        except Exception as e: res[name] = dict(error=f'{type(e).__name__}: {e}')
        res[name + '_seconds'] = time.perf_counter() - t
        print(f"{name}: done in {res[name + '_seconds']:.1f} s", flush=True)
        Path(a.out).write_text(json.dumps(res, indent=1, default=str))       # keep what is done if time runs out
    res['seconds'] = time.perf_counter() - t0
    Path(a.out).write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, indent=1, default=str)[:3000])
    return res


if __name__ == '__main__':
    main()
