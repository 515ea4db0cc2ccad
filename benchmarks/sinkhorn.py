"""Benchmark `avlearn.sinkhorn.sinkhorn_knopp` against its floors and its peers (float32, 2 threads by default).

For each shape (default N=65,536 x K=1,000 and N=16,384 x K=3,000) it prints, from one run on this machine (medians
of --repeats, every ratio between numbers measured in the same run, floors and ours interleaved):
  floor A  two matrix-vector products, K v and u^T K, over the exact kernel the solver iterates (its floor of e^-60,
           no subnormal entries) with the solver's own scaling vectors at convergence;
  floor B  one streaming read of that matrix (its sum);
  ours     time per iteration / floor A (target <= 1.3) and / floor B; set-up + output as a share of a whole solve
           (target <= 15%), i.e. (total - iterations x time per iteration) / total, with assignments and labels only;
           the solver's last iteration usually reads the plan out in the same pass, so the same share is also given
           with every iteration counted at the time of a plain pass (`sinkhorn_pass` over the solver's state);
           and the least that share can be: a set-up that costs only `torch.exp(L)` into fresh memory (it must write
           every entry of a new N x K buffer once, which maps that memory in) credited with a whole plain pass, and
           an output that costs one read of the matrix (floor B). A bound where the solver's buffer is fresh memory
           too, as at the default shapes (a small buffer can come back from the allocator already mapped);
  peers    total time to the same marginal error as ours, / ours: POT `ot.sinkhorn`, POT log-domain
           (`method='sinkhorn_log'`), a SwAV-style loop written here, and lightly's `sinkhorn` when installed. They all
           run plain Sinkhorn-Knopp, so each starts from the iterations our plain run (omega=1) needs for that error
           and adds iterations until its own plan (rows and columns checked) is within it.
Usage: python benchmarks/sinkhorn.py [--shapes 65536x1000,16384x3000] [--threads 2] [--repeats 5] [--lam 20]
                                     [--tol 1e-3] [--peer-repeats 1] [--skip-peers] [--device cpu]
"""
import argparse, importlib.util, statistics, time, warnings
import torch
from avlearn.sinkhorn import (sinkhorn_knopp, exponentiate_once, sinkhorn_pass, column_update, RowPasses,
                              marginal_error as _err)

def sync(device):
    if torch.device(device).type == 'cuda': torch.cuda.synchronize()

def timed(fn, device='cpu'):
    "(seconds, result) of one call of fn."
    sync(device); t0 = time.perf_counter(); out = fn(); sync(device)
    return time.perf_counter() - t0, out

def make_logits(n, k, scale=1., seed=0, device='cpu'):
    "SeLaVi-like logits: N(0, scale^2), seeded."
    return (torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * scale).to(device)

def marginal_error(Q, prior):
    "max(mean |row sum - 1|, sum_y |column mean - prior_y|) of soft assignments Q (N, K): rows and columns both count."
    row = (Q.sum(1, dtype=torch.float64) - 1).abs().mean().item()
    col = (Q.sum(0, dtype=torch.float64) / Q.shape[0] - prior.double()).abs().sum().item()
    return max(row, col)

# ---- peers: each returns soft assignments (N, K) with rows meant to sum to 1 after `iters` plain iterations ----
def pot_sinkhorn(L, lam, iters, method='sinkhorn'):
    "POT's ot.sinkhorn on the cost -(L - rowmax L) (the row shift keeps exp(-cost / reg) finite), reg = 1 / lam."
    import ot
    n, k = L.shape
    cost = -(L - L.amax(1, keepdim=True))
    a, b = torch.full((n,), 1. / n, device=L.device), torch.full((k,), 1. / k, device=L.device)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return ot.sinkhorn(a, b, cost, 1. / lam, method=method, numItermax=iters, stopThr=0.) * n

def pot_sinkhorn_log(L, lam, iters):
    return pot_sinkhorn(L, lam, iters, method='sinkhorn_log')

def swav_loop(L, lam, iters):
    "The SwAV-style loop: exponentiate, then normalise the whole matrix by columns and by rows in turn."
    n, k = L.shape
    Q = torch.exp(lam * (L - L.amax(1, keepdim=True)))
    Q /= Q.sum()
    for _ in range(iters):
        Q /= Q.sum(0, keepdim=True) * k      # every cluster holds 1 / K of the mass
        Q /= Q.sum(1, keepdim=True) * n      # every sample holds 1 / N
    return Q * n

def lightly_sinkhorn(L, lam, iters):
    "lightly's sinkhorn (SwAV loss), which takes scores and epsilon = 1 / lam and returns row-normalised codes."
    from lightly.loss.swav_loss import sinkhorn
    return sinkhorn(L - L.amax(1, keepdim=True), iterations=iters, epsilon=1. / lam)

def peers():
    "{name: solver(L, lam, iters)} for every peer available here."
    out = {'POT ot.sinkhorn': pot_sinkhorn, 'POT log-domain': pot_sinkhorn_log, 'SwAV-style loop': swav_loop}
    if importlib.util.find_spec('lightly') is not None: out['lightly sinkhorn'] = lightly_sinkhorn
    return out

def iterations_for(solver, L, lam, target, start, device='cpu', tries=8):
    "Smallest tried iteration count (from `start`, growing by ~10%) whose plan is within `target`: (iters, error)."
    prior = torch.full((L.shape[1],), 1. / L.shape[1], device=L.device)
    iters = max(1, start)
    for _ in range(tries):
        err = marginal_error(solver(L, lam, iters), prior)
        if err <= target: return iters, err
        iters = int(iters * 1.1) + 1
    return iters, err

# ---- floors over the solver's own kernel and scalings ----
def solver_state(L, lam, tol, max_iter=1000):
    "The solver's kernel and scalings at convergence, driven step by step (plain iterations; no absorption at lam=20)."
    plan, colsum, _ = exponentiate_once(L, lam)
    target = torch.full((L.shape[1],), L.shape[0] / L.shape[1], dtype=torch.float64, device=L.device)
    for _ in range(max_iter):
        if _err(plan, colsum, target) < tol: break
        column_update(plan, colsum, target); colsum = sinkhorn_pass(plan)
    return plan

def bench_shape(n, k, args):
    dev = torch.device(args.device)
    L = make_logits(n, k, args.scale, device=dev)
    prior = torch.full((k,), 1. / k, device=dev)
    print(f"\n== N={n} K={k} float32 logits ~ N(0, {args.scale}^2), lam={args.lam}, tol={args.tol}, device={dev}, "
          f"threads={torch.get_num_threads()}")
    sinkhorn_knopp(L[:4096], lam=args.lam, tol=args.tol)                     # warm-up
    plan = solver_state(L, args.lam, args.tol)
    floor_a, floor_b, floor_exp, totals, per_iter, iters, secs, totals_lab = [], [], [], [], [], [], [], []
    plain_pass = []
    rows = RowPasses(n, k * plan.K.element_size(), dev)
    for _ in range(args.repeats):
        plain_pass.append(timed(lambda: sinkhorn_pass(plan, 1., rows), dev)[0])
        floor_a.append(timed(lambda: (plan.K @ plan.v, plan.u @ plan.K), dev)[0])
        floor_b.append(timed(lambda: plan.K.sum(), dev)[0])
        floor_exp.append(timed(lambda: torch.exp(L), dev)[0])
        t, R = timed(lambda: sinkhorn_knopp(L, lam=args.lam, tol=args.tol), dev)
        totals.append(t); per_iter.append(R.seconds_per_iter); iters.append(R.n_iter); secs.append(R.seconds)
        ours_err = marginal_error(R.assignments, prior); del R
        t, R = timed(lambda: sinkhorn_knopp(L, lam=args.lam, tol=args.tol, return_assignments=False), dev)
        totals_lab.append(t); del R
    med = statistics.median
    fa, fb, it_s, total, n_it = med(floor_a), med(floor_b), med(per_iter), med(totals), int(med(iters))
    share = (total - n_it * it_s) / total
    share_lab = (med(totals_lab) - n_it * it_s) / med(totals_lab)
    fe, pp = med(floor_exp), med(plain_pass)
    strict, strict_lab = (total - n_it * pp) / total, (med(totals_lab) - n_it * pp) / med(totals_lab)
    share_floor = (fe - pp + fb) / (n_it * pp + fe - pp + fb)
    print(f"floor A  two products K v, u^T K (solver's kernel and u, v): {fa * 1e3:7.1f} ms  "
          f"(runs {', '.join(f'{x * 1e3:.0f}' for x in floor_a)})")
    print(f"floor B  one streaming read (sum of K):                      {fb * 1e3:7.1f} ms")
    print(f"ours     {n_it} iterations, {it_s * 1e3:.1f} ms/iteration, total {total:.3f} s, marginal error "
          f"{ours_err:.2e}; set-up {med([s['setup'] for s in secs]) * 1e3:.0f} ms (with the first iteration), "
          f"output {med([s['output'] for s in secs]) * 1e3:.0f} ms")
    print(f"RATIO    time per iteration / floor A: {it_s / fa:.2f}x (target <= 1.3x);  / floor B: {it_s / fb:.2f}x")
    print(f"SHARE    set-up + output, (total - iterations x ms/iteration) / total: {share:.1%} with assignments, "
          f"{share_lab:.1%} labels only (target <= 15%)")
    print(f"SHARE    the same, every iteration at a plain pass's {pp * 1e3:.1f} ms (the last one also read the plan "
          f"out): {strict:.1%} with assignments, {strict_lab:.1%} labels only")
    print(f"FLOOR    of that share: set-up = torch.exp(L) into fresh memory {fe * 1e3:.0f} ms less one iteration, "
          f"output = floor B: {share_floor:.1%}")
    rows.close()
    if args.skip_peers: return
    plain = sinkhorn_knopp(L, lam=args.lam, tol=ours_err, omega=1., return_assignments=False).n_iter
    print(f"peers    to marginal error <= {ours_err:.2e} (ours: {n_it} iterations; plain Sinkhorn-Knopp: {plain}):")
    for name, solver in peers().items():
        need, err = iterations_for(solver, L, args.lam, ours_err, plain, dev)
        ts = [timed(lambda: solver(L, args.lam, need), dev)[0] for _ in range(args.peer_repeats)]
        print(f"  {name:18s} {need:4d} it, error {err:.2e}, total {med(ts):7.2f} s  = {med(ts) / total:5.1f}x ours")
    if 'lightly sinkhorn' not in peers(): print("  lightly sinkhorn: not installed here")

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--shapes', default='65536x1000,16384x3000'); p.add_argument('--threads', type=int, default=2)
    p.add_argument('--repeats', type=int, default=5); p.add_argument('--peer-repeats', type=int, default=1)
    p.add_argument('--lam', type=float, default=20.); p.add_argument('--scale', type=float, default=1.)
    p.add_argument('--tol', type=float, default=1e-3); p.add_argument('--device', default='cpu')
    p.add_argument('--skip-peers', action='store_true')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for shape in args.shapes.split(','):
        n, k = map(int, shape.split('x'))
        bench_shape(n, k, args)

if __name__ == '__main__':
    main()
