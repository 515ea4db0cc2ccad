"""Heavier checks of avlearn.attention: every kernel against the loop reference over several layouts, the exact
cases of the approximations, gradients, and clear errors for bad shapes."""
import pytest
import torch
import torch.nn as nn
from avlearn.attention import (exact_attention, joint_attention, space_attention, time_attention, trajectory_attention,
                               orthoformer_attention, select_prototypes, nystrom_attention, performer_attention,
                               naive_video_attention, attention, VideoAttention, segment_means, performer_features)


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
