"""Heavier tests of `avlearn.sinkhorn`: the distributed solver (2 gloo processes on CPU) equals the single-process one,
the blocked two-thread passes equal one block, no subnormal products, and hard labels that keep the prior."""
import math
import pytest
import torch
from avlearn.dist import launch
from avlearn.sinkhorn import (sinkhorn_knopp, match_prior, exponentiate_once, sinkhorn_pass, column_update,
                              marginal_error, RowPasses, prior_counts)


def _problem():
    g = torch.Generator().manual_seed(0)
    L = torch.randn(2, 101, 9, generator=g) * 2     # 2 heads, N = 101 (not divisible by 2 processes), K = 9
    L[:, :, 2] += 1.                                  # an uneven current mass so the prior permutation matters
    prior = 1 / torch.arange(1, 10, dtype=torch.float64); prior /= prior.sum()
    return L, prior


def _worker(rank, world, bounds, kwargs, out):
    torch.set_num_threads(1)
    L, prior = _problem()
    lo, hi = bounds[rank]
    res = sinkhorn_knopp(L[:, lo:hi], prior=prior, group='world', **kwargs)
    torch.save(dict(assignments=res.assignments, labels=res.labels, log_u=res.log_u, log_v=res.log_v, prior=res.prior,
                    n_iter=res.n_iter, error=res.error, converged=res.converged), f'{out}/rank{rank}.pt')


def _run_two(tmp_path, bounds, kwargs):
    launch(_worker, 2, bounds, kwargs, str(tmp_path))
    return [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]


@pytest.mark.parametrize('bounds', [[(0, 51), (51, 101)], [(0, 10), (10, 101)]])
def test_two_process_gloo_equals_single_process(tmp_path, bounds):
    kwargs = dict(lam=10., tol=1e-10, dtype=torch.float64)
    parts = _run_two(tmp_path, bounds, kwargs)
    L, prior = _problem()
    ref = sinkhorn_knopp(L, prior=prior, **kwargs)
    assert ref.converged and all(p['converged'] for p in parts)
    assert all(p['n_iter'] == ref.n_iter for p in parts)
    for p in parts:                                  # cluster-side quantities are identical on every process
        assert torch.allclose(p['log_v'], ref.log_v, atol=1e-8)
        assert torch.equal(p['prior'], ref.prior)
        assert abs(p['error'] - ref.error) < 1e-12
    assert torch.allclose(torch.cat([p['assignments'] for p in parts], 1), ref.assignments, atol=1e-9)
    assert torch.equal(torch.cat([p['labels'] for p in parts], 1), ref.labels)
    assert torch.allclose(torch.cat([p['log_u'] for p in parts], 1), ref.log_u, atol=1e-8)
    # the permuted prior really is the prior sorted to the clusters' mass (cluster 2 was boosted: it gets the largest
    # value)
    assert (ref.prior[:, 2] == ref.prior.max(1).values).all()


def test_float32_distributed_matches_float32_single(tmp_path):
    kwargs = dict(lam=20., tol=1e-5)
    parts = _run_two(tmp_path, [(0, 50), (50, 101)], kwargs)
    L, prior = _problem()
    ref = sinkhorn_knopp(L, prior=prior, **kwargs)
    assert torch.allclose(torch.cat([p['assignments'] for p in parts], 1), ref.assignments, atol=1e-4)
    assert (torch.cat([p['labels'] for p in parts], 1) == ref.labels).float().mean() > 0.99


def test_prior_labels_distributed_equal_single_and_keep_the_sizes(tmp_path):
    kwargs = dict(lam=10., tol=1e-10, dtype=torch.float64, labels='prior')
    parts = _run_two(tmp_path, [(0, 10), (10, 101)], kwargs)
    L, prior = _problem()
    ref = sinkhorn_knopp(L, prior=prior, **kwargs)
    labels = torch.cat([p['labels'] for p in parts], 1)
    assert torch.equal(labels, ref.labels)
    for h in range(2):
        assert torch.equal(torch.bincount(ref.labels[h], minlength=9), prior_counts(ref.prior[h], 101))


def test_match_prior_direction_many_random():
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        mass = torch.rand(12, generator=g); prior = torch.rand(12, generator=g) + 0.01
        rp = match_prior(prior, mass)
        order = torch.argsort(mass)
        assert torch.all(rp[order][1:] >= rp[order][:-1])     # prior increases with mass


def test_absorption_path_stays_finite_and_converges_float64():
    g = torch.Generator().manual_seed(2)
    L = torch.randn(200, 10, generator=g) * 30        # lam * logits spans thousands: scalings must be absorbed
    res = sinkhorn_knopp(L, lam=10., tol=1e-6, max_iter=20000, dtype=torch.float64)
    assert torch.isfinite(res.assignments).all() and torch.isfinite(res.log_u).all() and torch.isfinite(res.log_v).all()
    assert res.error < 1e-2
    assert torch.allclose(res.assignments.sum(1), torch.ones(200, dtype=torch.float64), atol=1e-9)


def test_blocked_threaded_passes_equal_one_block():
    g = torch.Generator().manual_seed(4)
    L = torch.randn(3000, 64, generator=g)
    target = torch.full((64,), 3000 / 64, dtype=torch.float64)
    runs = []
    for passes in (RowPasses(3000, 256, threads=1, parallel_bytes=1 << 40),
                   RowPasses(3000, 256, threads=2, block_bytes=256 * 100, parallel_bytes=0)):
        with passes:
            plan, colsum, _ = exponentiate_once(L, 20., passes=passes)
            for _ in range(5):
                column_update(plan, colsum, target); colsum = sinkhorn_pass(plan, 1.3, passes)
        runs.append((plan.u.clone(), colsum, plan.v.clone()))
    assert passes.threads == 2 and passes.block == 100
    for a, b in zip(*runs): assert torch.allclose(a, b, rtol=1e-4)


def test_large_problem_uses_blocks_and_no_subnormal_products():
    g = torch.Generator().manual_seed(5)
    L = torch.randn(12000, 200, generator=g)          # 9.6 MB in float32: the blocked path
    assert RowPasses(12000, 200 * 4).block < 12000
    res = sinkhorn_knopp(L, lam=20., tol=1e-4, labels='prior')
    assert res.converged and torch.equal(torch.bincount(res.labels, minlength=200), prior_counts(res.prior, 12000))
    assert torch.allclose(res.assignments.sum(1), torch.ones(12000), atol=1e-4)
    plan, colsum, _ = exponentiate_once(L, 20.)
    target = torch.full((200,), 60., dtype=torch.float64)
    for _ in range(res.n_iter):
        column_update(plan, colsum, target); colsum = sinkhorn_pass(plan)
    tiny = torch.finfo(torch.float32).tiny            # the smallest normal float32
    assert plan.K.min() >= math.exp(-60) * (1 - 1e-6)
    assert plan.u.min() * plan.K.min() >= tiny and plan.K.min() * plan.v.min() >= tiny


@pytest.mark.parametrize('prior', [None, 'zipf'])
def test_near_identical_rows_prior_labels_follow_the_prior(prior):
    g = torch.Generator().manual_seed(6)
    L = torch.randn(1, 8, generator=g) + 1e-4 * torch.randn(96, 1, generator=g) * torch.randn(1, 8, generator=g)
    r = None if prior is None else (lambda z: z / z.sum())(1 / torch.arange(1, 9).float())
    argmax = sinkhorn_knopp(L, lam=20., prior=r)
    rounded = sinkhorn_knopp(L, lam=20., prior=r, labels='prior')
    assert argmax.converged and (torch.bincount(argmax.labels, minlength=8) == 0).sum() >= 4     # argmax piles up
    assert torch.equal(torch.bincount(rounded.labels, minlength=8), prior_counts(rounded.prior, 96))
    assert torch.equal(rounded.assignments, argmax.assignments)


@pytest.mark.parametrize('shape', [(2, 3000, 64), (1, 12000, 200)])   # one block; blocks over two threads
def test_premature_read_out_is_rebuilt(monkeypatch, shape):
    """The plain row update that confirms an over-relaxed iteration under tol also reads the plan out. If the solve
    has to go on after it (forced here once per head), K is rebuilt from the logits and the answer is the same."""
    import avlearn.sinkhorn as sk
    L = torch.randn(*shape, generator=torch.Generator().manual_seed(7)) * 2
    ref = sinkhorn_knopp(L, lam=20., tol=1e-5)
    step, refused = sk.OverRelaxation.step, []

    def refuse_first_confirmation(self, error, tol):
        # hold the objects, not their ids: a freed solver's id can come back for a new one
        if self.confirm and not any(o is self for o in refused): refused.append(self); error = 2 * tol
        return step(self, error, tol)
    monkeypatch.setattr(sk.OverRelaxation, 'step', refuse_first_confirmation)
    res = sinkhorn_knopp(L, lam=20., tol=1e-5)
    labels_only = sinkhorn_knopp(L, lam=20., tol=1e-5, return_assignments=False)
    assert len(refused) == 2 * shape[0] and res.converged and res.n_iter > ref.n_iter
    assert torch.allclose(res.assignments, ref.assignments, atol=1e-3)      # two plans within tol of the marginals
    assert (res.labels == ref.labels).float().mean() > 0.99 and torch.equal(labels_only.labels, res.labels)
    assert torch.allclose(res.assignments.sum(-1), torch.ones(shape[:2]), atol=1e-4)
    assert ((res.assignments.double().mean(1) - 1 / shape[2]).abs().sum(-1) < 2e-5).all()
