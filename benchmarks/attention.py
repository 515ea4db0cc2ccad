"""Attention cost benchmark (seed 004 ch. 6, section 3.2): exact vs Orthoformer vs Nystromformer vs Performer.

Time and peak memory for N = 1k ... 32k tokens at head dim 64 (one head, batch 1), fitted growth exponents
(time ~ N^a, memory ~ N^b), the N = 16,384 speed ratio of Orthoformer-64 vs exact attention, and chunked vs unchunked
exact trajectory attention at three token counts (unchunked, the peak grows toward N^2 as the N x T x S attention
takes over; with a fixed chunk of queries it holds c x N of it, so the peak grows at most linearly).
Every ratio is against a reference measured in the same run.

Peak memory: on CPU, from torch.profiler memory events (bytes allocated by torch during the call, net of what existed
before); on GPU, torch.cuda.max_memory_allocated minus the memory in use before the call.

    .venv/bin/python benchmarks/attention.py            # full sweep (a few minutes on a busy 2-core CPU)
    .venv/bin/python benchmarks/attention.py --quick    # N up to 4k, for a smoke test
    .venv/bin/python benchmarks/attention.py --threads 1   # one CPU thread (steadier on a machine shared with others)
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
    p.add_argument('--threads', type=int, default=0,
                   help="CPU intra-op threads (0: torch's default). On a busy shared machine every parallel op can wait a "
                        "scheduler slice for its second thread, which dominates kernels made of many small ops (Orthoformer)")
    a = p.parse_args(argv)
    if a.threads < 0: p.error(f"--threads must be >= 0, got {a.threads}")
    if a.threads: torch.set_num_threads(a.threads)
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

    # exact trajectory attention: chunked over queries vs everything at once, at growing token counts. Unchunked,
    # stage 1 holds an (N x T x S) attention tensor (N^2 / T) next to O(N T Dh) trajectory tokens, so its peak tends to
    # N^2 once S outgrows Dh; with a fixed chunk of c queries it holds c x N of it, so the peak grows at most linearly.
    T, H, Dh = 8, 4, 64
    C, Ss, chunks = H * Dh, (64, 128, 256), (None, 512, 128)
    print(f"\nexact trajectory attention, T={T} frames x S patches (+ class token), {H} heads x {Dh}, eq. 5 projections; "
          f"chunk = queries per chunk, none = unchunked reference (same run, same inputs):")
    pq, pkv = nn.Linear(C, C).to(dev), nn.Linear(C, 2 * C).to(dev)
    traj = {}
    with torch.no_grad():
        for S in Ss:
            q, k, v = (torch.randn(1, H, 1 + T * S, Dh, device=dev) for _ in range(3))
            f = lambda chunk, q=q, k=k, v=v: (lambda: trajectory_attention(q, k, v, T, proj_q=pq, proj_kv=pkv, chunk_size=chunk))
            times = {c: float('inf') for c in chunks}                # round-robin timings, all before any profiler session
            for _ in range(a.rounds):
                for c in chunks: times[c] = min(times[c], time_it(f(c), dev, 1))
            traj[S] = {c: (times[c], peak_mib(f(c), dev)) for c in chunks}
            assert torch.allclose(f(chunks[-1])(), f(None)(), atol=1e-4)
    out_mib = lambda S: H * (1 + T * S) * Dh * 4 / 2**20
    # stage 1 of one chunk of c queries: an (H, c, T, S) attention tensor and (H, c, T, Dh) trajectory tokens, three
    # times after the eq. 5 projections (float32); unchunked, c = N. The rest of the peak is O(N Dh) outputs.
    work_mib = lambda S, c: H * min(c or T * S, T * S) * (T * S + 3 * T * Dh) * 4 / 2**20
    print(f"  {'N':>6s} {'chunk':>6s} {'time ms':>9s} {'peak MiB':>9s} {'chunk work MiB':>15s}   {'time ratio':>10s} {'memory ratio':>12s}"
          f"   (ratios vs unchunked at the same N)")
    for S in Ss:
        t0, m0 = traj[S][None]
        for c in chunks:
            t, m = traj[S][c]
            print(f"  {1 + T * S:6d} {str(c or 'none'):>6s} {t * 1e3:9.1f} {m:9.1f} {work_mib(S, c):15.1f}   {t / t0:9.2f}x {m / m0:12.3f}"
                  + ("" if c is None else "   (time target <= 1.5x)"))
        print(f"  {'':6s} (the output tensor alone is {out_mib(S):.1f} MiB)")
    ns_t = [1 + T * S for S in Ss]
    print("  peak memory growth over N (peak ~ N^b): " + ", ".join(
        f"chunk {str(c or 'none')}: b = {fit_exponent(ns_t, [traj[S][c][1] for S in Ss]):.2f}" for c in chunks))
    for c in chunks[1:]:
        r = [traj[S][c][1] / traj[S][None][1] for S in Ss]
        print(f"  chunk {c}: memory ratio vs unchunked " + " -> ".join(f"{x:.3f}" for x in r)
              + f" as N goes {ns_t[0]} -> {ns_t[-1]}; worst time ratio {max(traj[S][c][0] / traj[S][None][0] for S in Ss):.2f}x")


if __name__ == '__main__':
    main()
