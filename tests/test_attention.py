"""Heavier checks of avlearn.attention: every kernel against the loop reference over several layouts, the exact
cases of the approximations, gradients, clear errors for bad shapes; the chunked kernels against their matrix formulas,
the FAVOR+ estimator's unbiasedness and variance, and the structured-input error tools."""
import math
from pathlib import Path
import pytest
import torch
from avlearn.papers.motionformer import motionformer
import torch.nn as nn
from avlearn.attention import (exact_attention, joint_attention, space_attention, time_attention, trajectory_attention,
                               orthoformer_attention, select_prototypes, nystrom_attention, performer_attention,
                               naive_video_attention, attention, VideoAttention, segment_means, performer_features,
                               softmax_attend, iterative_pinv, favor_features, relative_error, mean_value_attention,
                               subset_attention, clustered_qkv, ordering_verdict, motionformer_qkv)


@pytest.mark.parametrize('T,S,cls', [(1, 5, True), (2, 3, False), (4, 2, True), (3, 4, True)])
@pytest.mark.parametrize('mode', ['joint', 'space', 'time', 'trajectory'])
def test_kernels_match_loop_reference(T, S, cls, mode):
    g = torch.Generator().manual_seed(T * 10 + S)
    q, k, v = torch.randn(3, 2, 3, int(cls) + T * S, 6, generator=g).unbind(0)   # (B, H, N, D)
    fn = {'joint': joint_attention, 'space': space_attention, 'time': time_attention, 'trajectory': trajectory_attention}[mode]
    out = fn(q, k, v, T, has_cls=cls)
    for b in range(2):
        for h in range(3):
            ref = naive_video_attention(q[b, h], k[b, h], v[b, h], T, mode, cls)
            assert torch.allclose(out[b, h], ref, atol=1e-5), (mode, b, h)


def test_trajectory_chunks_and_projections():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 1 + 4 * 9, 8, generator=g).unbind(0)
    pq, pkv = nn.Linear(32, 32), nn.Linear(32, 64)
    full = trajectory_attention(q, k, v, 4, proj_q=pq, proj_kv=pkv)
    for c in (1, 5, 36, 100):
        assert torch.allclose(trajectory_attention(q, k, v, 4, proj_q=pq, proj_kv=pkv, chunk_size=c), full, atol=1e-5)
    with pytest.raises(ValueError, match='proj'):
        trajectory_attention(q, k, v, 4, proj_q=pq)
    with pytest.raises(ValueError, match='proj_kv'):
        trajectory_attention(q, k, v, 4, proj_q=pq, proj_kv=nn.Linear(32, 32))


def test_approximations_exact_cases():
    g = torch.Generator().manual_seed(1)
    q, v = torch.randn(2, 3, 40, 8, generator=g).unbind(0)
    k = torch.randn(3, 1, 8, generator=g).expand(3, 40, 8)
    ref = exact_attention(q, k, v)
    assert torch.allclose(ref, v.mean(-2, keepdim=True).expand_as(v), atol=1e-5)
    for sel in ('orthogonal', 'random', 'segment_means'):
        assert torch.allclose(orthoformer_attention(q, k, v, 1, sel, generator=g), ref, atol=1e-5), sel
    assert torch.allclose(performer_attention(q, k, v, 16, generator=g), ref, atol=1e-5)
    assert torch.allclose(nystrom_attention(q, k, v, 1), ref, atol=1e-5)
    qn, kn, vn = torch.randn(3, 20, 8, generator=g).unbind(0)
    assert torch.allclose(nystrom_attention(qn, kn, vn, 20, n_iter=40), exact_attention(qn, kn, vn), atol=1e-4)


def test_orthoformer_error_falls_with_prototypes():
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(16, 32, generator=g) * 2
    x = centres[torch.randint(0, 16, (512,), generator=g)] + 0.1 * torch.randn(512, 32, generator=g)
    v = torch.randn(512, 32, generator=g)
    ref = exact_attention(x, x, v)
    err = lambda R: (orthoformer_attention(x, x, v, R, generator=torch.Generator().manual_seed(0)) - ref).norm() / ref.norm()
    assert err(16) < err(2)


def test_prototypes_are_inputs_and_gradients_flow():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 30, 8, generator=g, requires_grad=True); k = torch.randn(2, 30, 8, generator=g, requires_grad=True)
    P = select_prototypes(q, k, 10, generator=g)
    allv = torch.cat([q, k], 1)
    for b in range(2):
        for p in P[b]: assert (allv[b] - p).abs().sum(-1).min() < 1e-6
    orthoformer_attention(q, k, k, 10, generator=g).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize('bad,err', [
    (dict(q=torch.randn(2, 5, 4), k=torch.randn(2, 5, 3), v=torch.randn(2, 5, 4)), 'feature'),
    (dict(q=torch.randn(5, 4), k=torch.randn(6, 4), v=torch.randn(5, 4)), 'tokens'),
    (dict(q=torch.randn(5, 4), k=torch.randn(5, 4), v=torch.randn(1, 5, 4)), 'dimensions'),
    (dict(q=[1.0], k=torch.randn(5, 4), v=torch.randn(5, 4)), 'torch.Tensor'),
])
@pytest.mark.parametrize('kernel', ['exact', 'orthoformer', 'nystrom', 'performer'])
def test_bad_shapes_clear_errors(bad, err, kernel):
    kw = {'orthoformer': dict(n_prototypes=2), 'nystrom': dict(n_landmarks=2), 'performer': dict(n_features=4)}.get(kernel, {})
    with pytest.raises((ValueError, TypeError), match=err):
        attention(bad['q'], bad['k'], bad['v'], kernel, **kw)


def test_video_attention_divided_is_time_then_space():
    torch.manual_seed(0)
    lay = VideoAttention(8, 2, 'divided')
    x = torch.randn(2, 1 + 3 * 4, 8)
    heads = lambda y, lin: lin(y).reshape(2, -1, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
    merge = lambda y: y.transpose(1, 2).reshape(2, -1, 8)
    t = lay.proj_t(merge(time_attention(*heads(x, lay.qkv_t), 3)))
    s = lay.proj(merge(space_attention(*heads(x + t, lay.qkv), 3)))
    assert torch.allclose(lay(x, 3), t + s, atol=1e-6)


def test_segment_means_errors():
    with pytest.raises(ValueError, match='n_segments'):
        segment_means(torch.randn(5, 3), 6)


def test_select_prototypes_bounds_follow_algorithm_1():
    "Prototypes come from the union of queries and keys: up to N + M of them (N != M here); segment means up to min(N, M)."
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 3, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    for sel in ('orthogonal', 'random'):
        P = select_prototypes(q, k, 8, sel, generator=g)
        assert P.shape == (2, 8, 8)
        allv = torch.cat([q, k], 1)   # with R = N + M every query and key is a prototype exactly once
        for b in range(2):
            assert torch.cdist(P[b], allv[b]).min(1).values.max() < 1e-6
            assert torch.cdist(P[b], allv[b]).argmin(1).unique().numel() == 8, sel
    with pytest.raises(ValueError, match=r'n_prototypes must be an int in \[1, 8\] \(queries \+ keys\)'):
        select_prototypes(q, k, 9)
    assert select_prototypes(q, k, 3, 'segment_means').shape == (2, 3, 8)
    with pytest.raises(ValueError, match=r'n_prototypes must be an int in \[1, 3\] \(min\(queries, keys\)\)'):
        select_prototypes(q, k, 4, 'segment_means')
    with pytest.raises(ValueError, match='share leading dimensions and D'):
        select_prototypes(q, k[..., :4], 2)


@pytest.mark.parametrize('P', [torch.randn(2, 4, 7), torch.randn(3, 4, 8), torch.randn(8), torch.randn(2, 0, 8)])
def test_given_prototypes_wrong_shape_clear_error(P):
    q, k, v = torch.randn(3, 2, 10, 8).unbind(0)
    with pytest.raises(ValueError, match=r'prototypes must have shape \(\.\.\., R, 8\).*got'):
        orthoformer_attention(q, k, v, prototypes=P)


def test_given_prototypes_broadcast_and_match_selection():
    g = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(3, 2, 3, 12, 8, generator=g).unbind(0)           # (B, H, N, D)
    P = select_prototypes(q, k, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(orthoformer_attention(q, k, v, prototypes=P),
                          orthoformer_attention(q, k, v, 4, generator=torch.Generator().manual_seed(0)), atol=1e-6)
    shared = P[:1, :1]                                                       # one set for every batch row and head
    out = orthoformer_attention(q, k, v, prototypes=shared)
    assert torch.allclose(out[1, 2], orthoformer_attention(q[1, 2], k[1, 2], v[1, 2], prototypes=shared[0, 0]), atol=1e-6)


@pytest.mark.parametrize('W,msg', [(torch.randn(16, 7), r'features must have shape \(n_features, 8\)'),
                                   (torch.randn(0, 8), r'features must have shape \(n_features, 8\)'),
                                   (torch.randn(2, 16, 8), 'features must have 2 dimensions'),
                                   (torch.randint(0, 2, (16, 8)), 'features must be a floating-point tensor')])
def test_performer_given_features_wrong_shape_clear_error(W, msg):
    q, k, v = torch.randn(3, 2, 10, 8).unbind(0)
    with pytest.raises((ValueError, TypeError), match=msg):
        performer_attention(q, k, v, features=W)


def test_performer_given_features_equal_generated():
    q, k, v = torch.randn(3, 2, 10, 8).unbind(0)
    W = performer_features(32, 8, torch.Generator().manual_seed(0))
    assert torch.equal(performer_attention(q, k, v, features=W),
                       performer_attention(q, k, v, 32, generator=torch.Generator().manual_seed(0)))


# ---- chunked, memory-light kernels -------------------------------------------------------------------------------

def test_softmax_attend_fused_and_chunked_paths_with_gradients():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(2, 3, 700, 8, generator=g, requires_grad=True); b = torch.randn(2, 3, 9, 8, generator=g)
    for dx in (8, 5):                                                         # fused (Dx = D), then row chunks
        x = torch.randn(2, 3, 9, dx, generator=g, requires_grad=True)
        ref = (a @ b.mT / math.sqrt(8)).softmax(-1) @ x
        out = softmax_attend(a, b, x)
        assert torch.allclose(out, ref, atol=1e-5)
        grads = torch.autograd.grad(out.square().sum(), (a, x))
        ref_grads = torch.autograd.grad(ref.square().sum(), (a, x))
        assert all(torch.allclose(g_, r_, atol=1e-4) for g_, r_ in zip(grads, ref_grads))


def test_orthoformer_and_nystrom_equal_their_matrix_formulas():
    "The fused / chunked forms compute exactly eq. 10 and Algorithm 2 written with explicit softmax matrices."
    g = torch.Generator().manual_seed(7)
    q, k, v = torch.randn(3, 2, 300, 16, generator=g).unbind(0)
    P = select_prototypes(q, k, 12, generator=torch.Generator().manual_seed(0))
    S = lambda x, y: (x @ y.mT / 4).softmax(-1)
    assert torch.allclose(orthoformer_attention(q, k, v, prototypes=P), S(q, P) @ (S(P, k) @ v), atol=1e-5)
    pq, pk = segment_means(q, 12), segment_means(k, 12)
    ref = S(q, pk) @ (iterative_pinv(S(pq, pk)) @ (S(pq, k) @ v))
    assert torch.allclose(nystrom_attention(q, k, v, 12), ref, atol=1e-4)
    v5 = v[..., :5]                                                             # Dv != D: the chunked path
    assert torch.allclose(orthoformer_attention(q, k, v5, prototypes=P), S(q, P) @ (S(P, k) @ v5), atol=1e-5)


def _greedy_with_table(cand, R):
    "Reference for Algorithm 1's greedy step with the full |cos| table (what the code avoids holding)."
    u = torch.nn.functional.normalize(cand, dim=-1); cos = (u @ u.T).abs()
    picks = [0]
    for _ in range(R - 1):
        worst = cos[picks].amax(0); worst[picks] = float('inf'); picks.append(int(worst.argmin()))
    return cand[picks]


def test_orthogonal_selection_equals_greedy_reference():
    g = torch.Generator().manual_seed(8)
    q, k = torch.randn(2, 40, 8, generator=g).unbind(0)
    # with c*R = N + M candidates, every query and key is a candidate; the random order only fixes the first pick
    P = select_prototypes(q, k, 20, oversample=4, generator=torch.Generator().manual_seed(1))
    allv = torch.cat([q, k])
    first = int(torch.cdist(P[:1], allv).argmin())
    cand = torch.cat([allv[first:first + 1], allv[torch.arange(80) != first]])
    assert torch.allclose(P, _greedy_with_table(cand, 20))


def test_segment_means_uneven_segments_match_loop():
    x = torch.randn(2, 3, 23, 4)
    edges = [-(-i * 23 // 5) for i in range(6)]                                # ceil(i N / R): contiguous, near-equal
    ref = torch.stack([x[..., a:b, :].mean(-2) for a, b in zip(edges, edges[1:])], -2)
    assert torch.allclose(segment_means(x, 5), ref, atol=1e-6)


def test_performer_is_the_favor_ratio_chunked_and_differentiable():
    g = torch.Generator().manual_seed(9)
    q, k, v = (0.7 * torch.randn(3, 1, 1200, 16, generator=g)).unbind(0)
    q.requires_grad_(); k.requires_grad_()
    W = performer_features(64, 16, torch.Generator().manual_seed(0))           # 1200 tokens: 3 chunks of 512
    out = performer_attention(q, k, v, features=W)
    fq, fk = favor_features(q / 2, W), favor_features(k / 2, W)
    ref = (fq @ (fk.mT @ v)) / (fq @ fk.sum(-2)[..., None])
    assert torch.allclose(out, ref, atol=1e-4)
    gq, gk = torch.autograd.grad(out.square().sum(), (q, k)); rq, rk = torch.autograd.grad(ref.square().sum(), (q, k))
    assert torch.allclose(gq, rq, atol=1e-3, rtol=1e-3) and torch.allclose(gk, rk, atol=1e-3, rtol=1e-3)


def test_performer_no_underflow_on_sharp_inputs():
    "Large |q|, |k| (logits in the hundreds): the stabilisers keep every output finite and a convex mix of values."
    g = torch.Generator().manual_seed(10)
    q, k = (6 * torch.randn(2, 1, 2000, 64, generator=g)).unbind(0); v = torch.rand(1, 2000, 64, generator=g)
    out = performer_attention(q, k, v, 64, generator=g)
    assert torch.isfinite(out).all() and (out >= -1e-6).all() and (out <= 1 + 1e-6).all()


# ---- FAVOR+ estimator: unbiased, with the published variance -----------------------------------------------------

def _kernel_estimates(x, y, n, orthogonal, seed):
    "n independent estimates with m = D features: performer_features draws its D x D blocks independently."
    D = x.numel()
    W = performer_features(n * D, D, torch.Generator().manual_seed(seed), orthogonal).reshape(n, D, D)
    return (favor_features(x.expand(n, 1, -1), W) * favor_features(y.expand(n, 1, -1), W)).sum(-1).squeeze(-1).double()


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_favor_unbiased_with_lemma_2_variance(seed):
    "E[phi(x).phi(y)] = exp(x.y); iid variance = SM^2 (exp|x+y|^2 - 1) / m (Lemma 2); orthogonal rows lower it."
    g = torch.Generator().manual_seed(seed)
    x, y = 0.6 * torch.nn.functional.normalize(torch.randn(2, 16, generator=g), dim=-1)            # |x| = |y| = 0.6
    sm = math.exp(x @ y); var_iid = sm ** 2 * (math.exp(((x + y) ** 2).sum()) - 1) / 16
    iid, orth = (_kernel_estimates(x, y, 20000, o, 100 + seed) for o in (False, True))
    for e in (iid, orth): assert abs(e.mean() - sm) < 4 * e.std() / math.sqrt(len(e)), (e.mean(), sm)
    assert abs(iid.var() / var_iid - 1) < 0.1, (iid.var(), var_iid)
    assert orth.var() < 0.9 * var_iid, (orth.var(), var_iid)


def test_orthogonal_features_have_uniform_directions():
    "QR without the sign fix gives W[0, 0] < 0 always (biased directions); Haar rows have either sign equally often."
    W = performer_features(8 * 2000, 8, torch.Generator().manual_seed(11)).reshape(2000, 8, 8)   # 2000 blocks
    frac = (W[:, :, 0] > 0).float().mean(0)                                    # per row: P(first coordinate > 0)
    assert ((frac > 0.45) & (frac < 0.55)).all(), frac
    gram = W[0] @ W[0].T
    assert torch.allclose(gram - torch.diag(gram.diagonal()), torch.zeros(8, 8), atol=1e-4)


# ---- error on structured inputs ----------------------------------------------------------------------------------

def test_orthoformer_beats_trivial_baselines_on_clustered_tokens():
    q, k, v = clustered_qkv(1024, generator=torch.Generator().manual_seed(0))
    ref = exact_attention(q, k, v)
    g = lambda: torch.Generator().manual_seed(0)
    ortho = relative_error(orthoformer_attention(q, k, v, 64, generator=g()), ref)
    assert ortho < 0.5 * relative_error(mean_value_attention(q, k, v), ref)
    assert ortho < 0.5 * relative_error(subset_attention(q, k, v, 64, g()), ref)


def test_ordering_verdict_rules():
    import pandas as pd
    order = ('a', 'b', 'c')
    def verdict(errs):   # errs: {method: [error per seed]}
        rows = [(m, 16, s, e) for m, es in errs.items() for s, e in enumerate(es)]
        return ordering_verdict(pd.DataFrame(rows, columns=['method', 'R', 'seed', 'error']), order, 16)[0]
    c = [.5, .52, .5]
    assert verdict({'a': [.1, .11, .12], 'b': [.2, .22, .21], 'c': c}) == 'holds'
    assert verdict({'a': [.3, .31, .32], 'b': [.2, .22, .21], 'c': c}) == 'contradicted'
    assert verdict({'a': [.1, .3, .2], 'b': [.2, .1, .3], 'c': c}) == 'not separated'
    assert verdict({'a': [.1], 'b': [.2], 'c': [.5]}).startswith('one seed')
    errs = {'a': [.1, .11, .12], 'b': [.2, .22, .21], 'c': c}
    rows = [(m, 16, s, e) for m, es in errs.items() for s, e in enumerate(es)]
    _, steps = ordering_verdict(pd.DataFrame(rows, columns=['method', 'R', 'seed', 'error']), order, 16)
    assert [s[0] for s in steps] == ['a < b', 'b < c'] and all(d < 0 for _, d, _ in steps)


def test_motionformer_tokens_from_fixture():
    fixture = Path(__file__).resolve().parents[1] / 'benchmarks' / 'fixtures' / 'motionformer_toy.pt'
    assert fixture.exists() and fixture.stat().st_size < 1_000_000
    q, k, v = motionformer_qkv(fixture, 700, seed=0, build=motionformer)      # 700 tokens: two clips, cut
    assert q.shape == k.shape == v.shape == (1, 1, 700, 64) and torch.isfinite(q).all()
    q2, _, _ = motionformer_qkv(fixture, 700, seed=0, build=motionformer)
    q0, _, _ = motionformer_qkv(fixture, 700, layer=0, seed=0, build=motionformer)
    assert torch.equal(q, q2) and not torch.allclose(q, q0)
    assert torch.load(fixture, weights_only=True)['train']['steps'] > 0       # a trained model, not an initialisation
