"""Attention cost benchmark (seed 004 ch. 6, section 3.2): exact vs Orthoformer vs Nystromformer vs Performer.

Time and peak memory for N = 1k ... 32k tokens at head dim 64 (one head, batch 1), fitted growth exponents
(time ~ N^a, memory ~ N^b), the N = 16,384 speed ratio of Orthoformer-64 vs exact attention, and chunked vs unchunked
exact trajectory attention. Every ratio is against a reference measured in the same run.

Peak memory: on CPU, from torch.profiler memory events (bytes allocated by torch during the call, net of what existed
before); on GPU, torch.cuda.max_memory_allocated minus the memory in use before the call.

    .venv/bin/python benchmarks/attention.py            # full sweep (a few minutes on a busy 2-core CPU)
    .venv/bin/python benchmarks/attention.py --quick    # N up to 4k, for a smoke test
"""
from __future__ import annotations
import argparse, time, warnings
import numpy as np
import torch
import torch.nn as nn
from avlearn.attention import (exact_attention, orthoformer_attention, nystrom_attention, performer_attention,
                               performer_features, trajectory_attention)

warnings.filterwarnings('ignore')


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def time_it(fn, dev, reps):
    "Minimum wall time over `reps` calls after one warm-up (the minimum is the least noisy on a shared machine)."
    fn(); sync(dev); best = float('inf')
    for _ in range(reps):
        t = time.perf_counter(); fn(); sync(dev); best = min(best, time.perf_counter() - t)
    return best


def peak_mib(fn, dev):
    "Peak bytes torch allocates while `fn` runs (MiB), net of memory already in use."
    if dev.type == 'cuda':
        sync(dev); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
        fn(); sync(dev)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof: fn()
    ev = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == '[memory]')
    cur = peak = 0
    for _, b in ev: cur += b; peak = max(peak, cur)
    return peak / 2**20


def materialised_exact(q, k, v):
    "Exact attention with the N x N softmax matrix held in memory (what a plain implementation does)."
    return (q @ k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5).softmax(-1) @ v


def fit_exponent(ns, ys):
    ns, ys = np.asarray(ns, float), np.asarray(ys, float)
    ok = ys > 0
    return float(np.polyfit(np.log(ns[ok]), np.log(ys[ok]), 1)[0]) if ok.sum() >= 2 else float('nan')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='N up to 4096 only')
    p.add_argument('--max-exact', type=int, default=16384, help='largest N for fused exact attention (time grows as N^2)')
    p.add_argument('--max-materialised', type=int, default=8192, help='largest N for the materialised N x N softmax')
    p.add_argument('--rounds', type=int, default=5, help='timing rounds (each cell keeps its minimum)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = p.parse_args(argv)
    dev = torch.device(a.device); torch.manual_seed(0)
    # tiny softmax weights (exp of very negative logits) are denormal floats, and x86 matmuls on denormals are 10-100x
    # slower; flushing them to zero changes no result above 1e-38 and makes CPU timings depend on the algorithm only
    flushed = torch.set_flush_denormal(True)
    ns = [1024, 2048, 4096] if a.quick else [1024, 2048, 4096, 8192, 16384, 32768]
    D = 64
    print(f"device {dev} ({torch.get_num_threads()} CPU threads), head dim {D}, batch 1, one head; time = min over reps; "
          f"denormals flushed: {flushed}")
    feats = performer_features(256, D, torch.Generator().manual_seed(0)).to(dev)
    methods = {
        'exact (fused SDPA)': (lambda q, k, v: exact_attention(q, k, v), a.max_exact),
        'exact (materialised)': (materialised_exact, a.max_materialised),
        'Orthoformer-64': (lambda q, k, v: orthoformer_attention(q, k, v, 64, generator=torch.Generator().manual_seed(0)), None),
        'Orthoformer-128': (lambda q, k, v: orthoformer_attention(q, k, v, 128, generator=torch.Generator().manual_seed(0)), None),
        'Nystrom-64': (lambda q, k, v: nystrom_attention(q, k, v, 64), None),
        'Performer-256': (lambda q, k, v: performer_attention(q, k, v, features=feats), None),
    }
    # Timing first, memory second: a profiler session leaves per-op overhead behind on CPU. Timings are taken in
    # round-robin rounds over all (method, N) cells, keeping each cell's minimum, so that a burst of load from other
    # processes on a shared machine hits one round of every cell instead of every repeat of one cell.
    res = {m: {} for m in methods}
    inputs = {n: tuple(torch.randn(1, 1, n, D, device=dev) for _ in range(3)) for n in ns}
    cells = [(name, n, (lambda fn=fn, n=n: fn(*inputs[n]))) for name, (fn, cap) in methods.items() for n in ns if cap is None or n <= cap]
    with torch.no_grad():
        for name, n, f in cells: res[name][n] = [time_it(f, dev, 1)]
        for r in range(a.rounds - 1):
            for name, n, f in cells: res[name][n][0] = min(res[name][n][0], time_it(f, dev, 1))
            print(f"  timing round {r + 2}/{a.rounds} done", flush=True)
        for name, n, f in cells: res[name][n].append(peak_mib(f, dev))
    print(f"\n{'method':22s}" + ''.join(f"{n:>16d}" for n in ns) + "    (time ms / peak MiB)")
    for name, (fn, cap) in methods.items():
        print(f"{name:22s}" + ''.join(f"{res[name][n][0] * 1e3:9.1f}/{res[name][n][1]:6.1f}" if n in res[name] else f"{'skipped':>16s}"
                                      for n in ns))
    skipped = [f"{m} for N > {c}" for m, (_, c) in methods.items() if c is not None and c < ns[-1]]
    if skipped: print("skipped (too slow / too big here, grows as N^2):", '; '.join(skipped))

    print("\ngrowth exponents, fitted on log-log over the measured N (time ~ N^a, peak memory ~ N^b):")
    for name in methods:
        r = res[name]; n_ = sorted(r); big = [n for n in n_ if n >= 4096]
        if len(n_) < 2: continue
        print(f"  {name:22s} a = {fit_exponent(n_, [r[n][0] for n in n_]):5.2f} (N>=4096: {fit_exponent(big, [r[n][0] for n in big]):5.2f})"
              f"   b = {fit_exponent(n_, [r[n][1] for n in n_]):5.2f}")
    nref = 16384 if 16384 in res['exact (fused SDPA)'] else max(res['exact (fused SDPA)'])
    te = res['exact (fused SDPA)'][nref][0]
    for name in ('Orthoformer-64', 'Orthoformer-128', 'Nystrom-64', 'Performer-256'):
        print(f"N={nref}: {name} is {te / res[name][nref][0]:.1f}x faster than exact fused attention "
              f"({te * 1e3:.0f} ms vs {res[name][nref][0] * 1e3:.1f} ms)" + ("  [target >= 30x on CPU]" if name == 'Orthoformer-64' else ''))

    # exact trajectory attention: chunked over queries vs everything at once
    T, S, H, Dh = 8, 256, 4, 64
    C = H * Dh
    print(f"\nexact trajectory attention, T={T} frames x S={S} patches (+ class token), {H} heads x {Dh}, eq. 5 projections:")
    q, k, v = (torch.randn(1, H, 1 + T * S, Dh, device=dev) for _ in range(3))
    pq, pkv = nn.Linear(C, C).to(dev), nn.Linear(C, 2 * C).to(dev)
    with torch.no_grad():
        chunks = (None, 512, 256, 128)
        f = lambda chunk: (lambda: trajectory_attention(q, k, v, T, proj_q=pq, proj_kv=pkv, chunk_size=chunk))
        times = {c: float('inf') for c in chunks}                   # round-robin timings, all before any profiler session
        for _ in range(a.rounds):
            for c in chunks: times[c] = min(times[c], time_it(f(c), dev, 1))
        rows = {c: (times[c], peak_mib(f(c), dev)) for c in chunks}
        assert torch.allclose(trajectory_attention(q, k, v, T, proj_q=pq, proj_kv=pkv, chunk_size=128),
                              trajectory_attention(q, k, v, T, proj_q=pq, proj_kv=pkv), atol=1e-4)
    t0, m0 = rows[None]
    for chunk, (t, m) in rows.items():
        print(f"  chunk {str(chunk or 'none'):>5s}: {t * 1e3:7.1f} ms, peak {m:7.1f} MiB   time ratio vs unchunked {t / t0:.2f}x"
              f"  (target <= 1.5x), memory ratio {m / m0:.2f}")


if __name__ == '__main__':
    main()
