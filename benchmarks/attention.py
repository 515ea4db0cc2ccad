"""Attention benchmark (seed 004 ch. 6, section 3.2): exact vs Orthoformer vs Nystromformer vs Performer.

1. Errors on structured inputs (`--sections errors`): relative error ||Y~ - Y|| / ||Y|| against exact attention of
   Orthoformer (orthogonal / random / segment-means prototypes), Nystromformer and Performer, beside two trivial
   baselines (the mean of v; exact attention over R random keys), for R = 16 ... 256 and N = 1k, 4k, 16k tokens, mean
   over 3 seeds, on Motionformer tokens (a tiny Motionformer trained on the toy world: benchmarks/fixtures/
   motionformer_toy.pt, made by `--make-fixture`), clustered tokens, sharpened logits and, for reference, random
   q, k, v; with a computed verdict on Table 3b's ordering (orthogonal < random < segment means) at every R.
2. Peak memory at N = 16,384 of every approximation against fused exact attention, measured in the same run.
3. Cost (`--sections cost`): time and peak memory for N = 1k ... 32k tokens at head dim 64 (one head, batch 1), fitted
   growth exponents (time ~ N^a, memory ~ N^b), the N = 16,384 speed ratio of Orthoformer-64 vs exact attention.
4. Trajectory (`--sections trajectory`): chunked vs unchunked exact trajectory attention at three token counts
   (unchunked, the peak grows toward N^2 as the N x T x S attention takes over; with a fixed chunk of queries it holds
   c x N of it, so the peak grows at most linearly).
Every ratio is against a reference measured in the same run.

Peak memory: on CPU, from torch.profiler memory events (bytes allocated by torch during the call, net of what existed
before); on GPU, torch.cuda.max_memory_allocated minus the memory in use before the call.

    .venv/bin/python benchmarks/attention.py            # everything (about 10 minutes on a busy 2-core CPU)
    .venv/bin/python benchmarks/attention.py --quick    # N up to 4k, for a smoke test
    .venv/bin/python benchmarks/attention.py --sections errors,memory
    .venv/bin/python benchmarks/attention.py --threads 1   # one CPU thread (steadier on a machine shared with others)
    .venv/bin/python benchmarks/attention.py --make-fixture   # retrain the Motionformer fixture (minutes)
"""
from __future__ import annotations
import argparse, time, warnings
from pathlib import Path
import numpy as np
import torch
from avlearn.papers.motionformer import motionformer
import torch.nn as nn
import torch.nn.functional as F
from avlearn.attention import (exact_attention, orthoformer_attention, nystrom_attention, performer_attention,
                               performer_features, trajectory_attention, subset_attention, ERROR_METHODS,
                               TRIVIAL_BASELINES, TABLE_3B_ORDER, approximation_errors, ordering_verdict,
                               clustered_qkv, sharpened_qkv, motionformer_qkv, attention_diagnostics)

FIXTURE = Path(__file__).resolve().parent / 'fixtures' / 'motionformer_toy.pt'

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


def make_fixture(path, steps=1000, batch=16, lr=1e-3, seed=0):
    """Train the tiny Motionformer whose tokens the error section measures, and save it (fp16, < 1 MB) to `path`.

    `tiny` size with one 64-d head (the head size of ViT-B, so D matches the paper), 16 x 32 x 32 toy-world clips (the
    world rendered at 32 pixels, as 14_motionformer's miniatures use 32 x 32) in 2 x 8 x 8 cubes (8 frames x 16 patch
    tokens), trajectory attention, AdamW with label smoothing 0.2 as in the paper; one linear head per factor (action,
    object, colour) of the default world so that the tokens have to encode both motion and appearance. Held-out
    accuracies are stored with the weights."""
    from avlearn.papers.motionformer import motionformer
    from avlearn.core import seed_everything
    from avlearn.data import ToyWorld, ToyWorldConfig, ACTIONS, SHAPES, COLOURS
    factors = {'action': len(ACTIONS), 'object': len(SHAPES), 'colour': len(COLOURS)}
    model_kw, world_kw = dict(size='tiny', n_classes=sum(factors.values()), heads=1, img_size=32), dict(size=32)
    seed_everything(seed)
    model = motionformer(**model_kw)
    world, test = (ToyWorld(ToyWorldConfig(**world_kw), n=n, seed=s) for n, s in ((1 << 14, seed), (512, seed + 1)))
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    g, t0 = torch.Generator().manual_seed(seed), time.perf_counter()

    def per_factor(logits, b):   # the logits of each factor's head, in the order of `factors`
        return dict(zip(factors, logits.split(list(factors.values()), -1)))
    for step in range(steps):
        b = world.batch(torch.randint(len(world), (batch,), generator=g).tolist())
        logits = per_factor(model(b['video']), b)
        losses = {f: F.cross_entropy(lg, b[f], label_smoothing=0.2) for f, lg in logits.items()}
        opt.zero_grad(); sum(losses.values()).backward(); opt.step(); sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"  step {step:5d}  " + '  '.join(f"{f} {l.item():.3f}" for f, l in losses.items())
                  + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval(); hits = dict.fromkeys(factors, 0)
    with torch.no_grad():
        for i in range(0, len(test), 64):
            b = test.batch(range(i, min(i + 64, len(test))))
            for f, lg in per_factor(model(b['video']), b).items(): hits[f] += (lg.argmax(-1) == b[f]).sum().item()
    acc = {f: hits[f] / len(test) for f in factors}
    chance = {f: 1 / n for f, n in factors.items()}
    print("  held-out accuracy " + ', '.join(f"{f} {acc[f]:.3f} (chance {chance[f]:.3f})" for f in factors))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    train = dict(steps=steps, batch=batch, lr=lr, seed=seed, factors=list(factors), accuracy=acc, chance=chance,
                 seconds=round(time.perf_counter() - t0))
    state = {k: v.half() for k, v in model.state_dict().items()}                   # fp16: the fixture stays < 1 MB
    torch.save(dict(model=model_kw, state=state, world=world_kw, eval_seed=seed + 1, train=train), path)
    print(f"  saved {path} ({Path(path).stat().st_size / 1e3:.0f} kB)")


def input_kinds(fixture):
    "name -> make_inputs(n_tokens, seed): structured inputs (Motionformer tokens if the fixture exists), plain random."
    g = lambda s: torch.Generator().manual_seed(s)
    kinds = {}
    if Path(fixture).exists():
        kinds['Motionformer tokens (last block)'] = lambda n, s: motionformer_qkv(fixture, n, layer=-1, seed=s, build=motionformer)
        kinds['Motionformer tokens (first block)'] = lambda n, s: motionformer_qkv(fixture, n, layer=0, seed=s, build=motionformer)
    else: print(f"  (no fixture at {fixture}: run with --make-fixture to include Motionformer tokens)")
    kinds['clustered tokens (16 clusters)'] = lambda n, s: clustered_qkv(n, generator=g(s))
    kinds['sharpened logits (q, k x 2)'] = lambda n, s: sharpened_qkv(n, generator=g(s))
    kinds['random q, k, v (no structure, reference)'] = lambda n, s: sharpened_qkv(n, sharpen=1.0, generator=g(s))
    return kinds


def errors_section(a):
    ns, Rs, seeds = ((1024, 4096) if a.quick else (1024, 4096, 16384)), (16, 32, 64, 128, 256), tuple(range(a.seeds))
    print(f"\n== 1. Relative error ||Y~ - Y|| / ||Y|| against exact attention, mean over {len(seeds)} seeds "
          f"(R = prototypes / landmarks / features / random keys) ==")
    print("   '!' marks an approximation worse than the better trivial baseline (mean of v, or R random keys)")
    summary = []
    with torch.no_grad():
        for kind, make in input_kinds(a.fixture).items():
            for n in ns:
                t0 = time.perf_counter()
                e = approximation_errors(lambda s: make(n, s), Rs, seeds)
                m = e.groupby(['method', 'R']).error.mean().unstack('R').reindex(list(ERROR_METHODS))
                sd = e.groupby(['method', 'R']).error.std().unstack('R').reindex(list(ERROR_METHODS))
                bar = m.loc[list(TRIVIAL_BASELINES)].min()
                print(f"\n{kind}, N = {n} ({time.perf_counter() - t0:.0f} s)")
                print(f"  {'method':30s}" + ''.join(f"{'R=' + str(R):>16s}" for R in Rs))
                for name in ERROR_METHODS:
                    flag = lambda R: '!' if name not in TRIVIAL_BASELINES and m.loc[name, R] > bar[R] else ' '
                    cells = ''.join(f"{m.loc[name, R]:9.3f}±{sd.loc[name, R]:<5.3f}{flag(R)}" for R in Rs)
                    print(f"  {name:30s}{cells}")
                for R in Rs:
                    verdict, steps = ordering_verdict(e, TABLE_3B_ORDER, R)
                    print(f"  Table 3b order at R={R:<3d}: {verdict:14s} " + '; '.join(
                        f"{p.replace('Orthoformer ', '')}: diff {d:+.3f} ± {se:.3f}" for p, d, se in steps))
                    summary.append((kind, n, R, verdict))
                losers = {name: [R for R in Rs if m.loc[name, R] > bar[R]] for name in ERROR_METHODS
                          if name not in TRIVIAL_BASELINES}
                print("  worse than a trivial baseline: "
                      + ('; '.join(f"{k} at R={v}" for k, v in losers.items() if v) or 'none'))
    print("\nWhere the approximations break (N = 1024, seed 0, R = 128; see 09_attention): keys per query = median "
          "row perplexity of exact attention; rank 90% = singular values holding 90% of its energy; Orthoformer cos / "
          "norm ratio = row-wise against exact (norm kept, direction lost = a confident wrong answer, error near "
          "sqrt 2); Performer relative std = predicted noise of one kernel estimate at m = 128 (Lemma 2)")
    with torch.no_grad():
        for kind, make in input_kinds(a.fixture).items():
            d = attention_diagnostics(*make(1024, 0), R=128, generator=torch.Generator().manual_seed(0))
            print(f"  {kind:45s} " + '  '.join(f"{k} {v:.3g}" for k, v in d.items()))
    print("\nTable 3b ordering (orthogonal < random < segment means), verdicts over all inputs / N / R:")
    for kind in dict.fromkeys(k for k, *_ in summary):
        vs = [v for k, n, R, v in summary if k == kind]
        counts = ', '.join(f"{x}: {vs.count(x)}" for x in ('holds', 'not separated', 'contradicted'))
        print(f"  {kind:45s} {counts} of {len(vs)}")


def memory_section(a, dev):
    n, D = (4096 if a.quick else 16384), 64
    print(f"\n== 2. Peak memory at N = {n} (head dim {D}, one head), ratio against fused exact attention, same run ==")
    q, k, v = (torch.randn(1, 1, n, D, device=dev) for _ in range(3))
    g = lambda: torch.Generator().manual_seed(0)
    with torch.no_grad():
        ref = peak_mib(lambda: exact_attention(q, k, v), dev)
        print(f"  exact (fused SDPA): {ref:.2f} MiB (its output alone: {n * D * 4 / 2**20:.2f} MiB)")
        worst = 0.0
        for R in (16, 64, 256):
            cells = {f'Orthoformer-{R} ({sel})': lambda sel=sel: orthoformer_attention(q, k, v, R, sel, generator=g())
                     for sel in ('orthogonal', 'random', 'segment_means')}
            cells.update({f'Nystromformer-{R}': lambda: nystrom_attention(q, k, v, R),
                          f'Performer-{R}': lambda: performer_attention(q, k, v, R, generator=g()),
                          f'random {R} keys (baseline)': lambda: subset_attention(q, k, v, R, g())})
            for name, f in cells.items():
                mib = peak_mib(f, dev)
                if 'baseline' not in name: worst = max(worst, mib / ref)
                print(f"  {name:34s} {mib:7.2f} MiB   {mib / ref:5.2f}x exact")
        print(f"  largest ratio of an approximation: {worst:.2f}x (target <= 1: {'met' if worst <= 1 else 'NOT met'})")


def cost_section(a, dev):
    ns = [1024, 2048, 4096] if a.quick else [1024, 2048, 4096, 8192, 16384, 32768]
    D = 64
    print(f"\n== 3. Cost: head dim {D}, batch 1, one head; time = min over reps ==")
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



def trajectory_section(a, dev):
    print("\n== 4. Exact trajectory attention, chunked vs unchunked ==")
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



def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='N up to 4096 only')
    p.add_argument('--sections', default='errors,memory,cost,trajectory', help='comma-separated subset of '
                   'errors,memory,cost,trajectory')
    p.add_argument('--seeds', type=int, default=3, help='seeds per error cell (inputs and random choices)')
    p.add_argument('--fixture', default=str(FIXTURE), help='the trained Motionformer (see --make-fixture)')
    p.add_argument('--make-fixture', action='store_true', help='train the Motionformer fixture, save it, and exit')
    p.add_argument('--fixture-steps', type=int, default=1000, help='training steps for --make-fixture')
    p.add_argument('--max-exact', type=int, default=16384, help='largest N for fused exact attention (time grows as N^2)')
    p.add_argument('--max-materialised', type=int, default=8192, help='largest N for the materialised N x N softmax')
    p.add_argument('--rounds', type=int, default=5, help='timing rounds (each cell keeps its minimum)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, default=0,
                   help="CPU intra-op threads (0: torch's default). On a busy shared machine every parallel op can wait a "
                        "scheduler slice for its second thread, which dominates kernels made of many small ops (Orthoformer)")
    a = p.parse_args(argv)
    if a.threads < 0: p.error(f"--threads must be >= 0, got {a.threads}")
    if a.seeds < 2: p.error(f"--seeds must be >= 2 (verdicts need a noise estimate), got {a.seeds}")
    sections = a.sections.split(',')
    if set(sections) - {'errors', 'memory', 'cost', 'trajectory'}: p.error(f"unknown --sections {a.sections!r}")
    if a.threads: torch.set_num_threads(a.threads)
    if a.make_fixture:
        print(f"training the Motionformer fixture ({a.fixture_steps} steps)")
        return make_fixture(a.fixture, a.fixture_steps)
    dev = torch.device(a.device); torch.manual_seed(0)
    # tiny softmax weights (exp of very negative logits) are denormal floats, and x86 matmuls on denormals are 10-100x
    # slower; flushing them to zero changes no result above 1e-38 and makes CPU timings depend on the algorithm only
    flushed = torch.set_flush_denormal(True)
    print(f"device {dev} ({torch.get_num_threads()} CPU threads); denormals flushed: {flushed}")
    if 'errors' in sections: errors_section(a)
    if 'memory' in sections: memory_section(a, dev)
    if 'cost' in sections: cost_section(a, dev)
    if 'trajectory' in sections: trajectory_section(a, dev)


if __name__ == '__main__':
    main()
