"Heavier checks of avlearn.losses: naive-loop references, float64 gradchecks, limits, errors, a real 2-process gloo gather."
import math, os, tempfile
import pytest
import torch
import torch.nn.functional as F
import torch.distributed as dist
import torch.multiprocessing as mp
from avlearn.dist import all_gather_rows, all_gather_with_grad
from avlearn.losses import (info_nce, nt_xent, cross_modal_nce, MemoryBank, memory_nce,
                            avid_cma_loss, triplet_ranking_loss, margin_contrastive_loss, triplet_margin_loss,
                            composition_loss)

D64 = torch.float64


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=D64), dim=-1)


# ---------- naive references: one python loop per formula ----------
def ref_info_nce(q, k, t, extra=None):
    tot = 0.
    for i in range(q.shape[0]):
        den = sum(math.exp(float(q[i] @ k[j]) / t) for j in range(k.shape[0]))
        if extra is not None: den += sum(math.exp(float(q[i] @ e) / t) for e in extra)
        tot += -(float(q[i] @ k[i]) / t - math.log(den))
    return tot / q.shape[0]


def ref_nt_xent(z1, z2, t):
    z = torch.cat([z1, z2]); n = z.shape[0]; b = n // 2; tot = 0.
    for a in range(n):
        p = (a + b) % n
        den = sum(math.exp(float(z[a] @ z[c]) / t) for c in range(n) if c != a)
        tot += -(float(z[a] @ z[p]) / t - math.log(den))
    return tot / n


def ref_triplet_ranking(t, v, m, hardest):
    t, v = F.normalize(t, dim=1), F.normalize(v, dim=1); b = t.shape[0]; tot = 0.
    for i in range(b):
        c1 = [max(0., m - float(t[i] @ v[i]) + float(t[i] @ v[j])) for j in range(b) if j != i]
        c2 = [max(0., m - float(t[i] @ v[i]) + float(t[j] @ v[i])) for j in range(b) if j != i]
        tot += (max(c1) + max(c2)) if hardest else (sum(c1) + sum(c2))
    return tot / b


def ref_margin(a, p, m, negs=None):
    b = a.shape[0]; tot = 0.
    for i in range(b):
        ns = [p[j] for j in range(b) if j != i] if negs is None else list(negs[i])
        tot += float((a[i] - p[i]).pow(2).sum()) + sum(max(0., m - float((a[i] - n).norm())) ** 2 for n in ns) / len(ns)
    return tot / b


def test_info_nce_matches_loop():
    q, k, e = unit(6, 5, seed=1), unit(6, 5, seed=2), unit(4, 5, seed=3)
    assert info_nce(q, k, 0.3).item() == pytest.approx(ref_info_nce(q, k, 0.3), abs=1e-12)
    assert info_nce(q, k, 0.3, extra_negatives=e).item() == pytest.approx(ref_info_nce(q, k, 0.3, e), abs=1e-12)
    sym = 0.5 * (ref_info_nce(q, k, 0.3) + ref_info_nce(k, q, 0.3))
    assert info_nce(q, k, 0.3, symmetric=True).item() == pytest.approx(sym, abs=1e-12)


def test_nt_xent_and_cross_modal_match_loop():
    a, b = unit(5, 4, seed=4), unit(5, 4, seed=5)
    assert nt_xent(a, b, 0.2).item() == pytest.approx(ref_nt_xent(a, b, 0.2), abs=1e-12)
    an, vn = unit(3, 4, seed=6), unit(2, 4, seed=7)
    ref = 0.5 * (ref_info_nce(a, b, 0.1, an) + ref_info_nce(b, a, 0.1, vn))
    assert cross_modal_nce(a, b, 0.1, video_negatives=vn, audio_negatives=an).item() == pytest.approx(ref, abs=1e-10)


def test_triplet_and_margin_losses_match_loop():
    t, v = torch.randn(6, 5, dtype=D64), torch.randn(6, 5, dtype=D64)
    for hardest in (True, False):
        assert triplet_ranking_loss(t, v, 0.2, hardest).item() == pytest.approx(ref_triplet_ranking(t, v, 0.2, hardest), abs=1e-12)
    a, p, n = torch.randn(4, 3, dtype=D64), torch.randn(4, 3, dtype=D64), torch.randn(4, 5, 3, dtype=D64)
    assert margin_contrastive_loss(a, p, margin=2.).item() == pytest.approx(ref_margin(a, p, 2.), abs=1e-12)
    assert margin_contrastive_loss(a, p, n, margin=2.).item() == pytest.approx(ref_margin(a, p, 2., n), abs=1e-12)
    nn = torch.randn(4, 3, dtype=D64)
    ref = sum(max(0., float((a[i] - p[i]).pow(2).sum() - (a[i] - nn[i]).pow(2).sum()) + 1.5) for i in range(4)) / 4
    assert triplet_margin_loss(a, p, nn, 1.5).item() == pytest.approx(ref, abs=1e-12)
    h, c = torch.randn(3, 4, dtype=D64), torch.randn(3, 4, dtype=D64)
    assert composition_loss(h, c).item() == pytest.approx(sum(float((h[i] - c[i]).pow(2).sum()) / 4 for i in range(3)) / 3)


def test_memory_nce_and_avid_match_loop():
    q, p, n = unit(3, 4, seed=8), unit(3, 2, 4, seed=9), unit(3, 6, 4, seed=10)
    ref = 0.
    for i in range(3):
        negs = sum(math.exp(float(q[i] @ x) / 0.5) for x in n[i])
        ref += sum(-(float(q[i] @ y) / 0.5 - math.log(math.exp(float(q[i] @ y) / 0.5) + negs)) for y in p[i]) / 2
    assert memory_nce(q, p, n, 0.5).item() == pytest.approx(ref / 3, abs=1e-12)
    bank = MemoryBank(30, 4, dtype=D64, seed=1)
    v, a, idx = unit(3, 4, seed=11), unit(3, 4, seed=12), torch.tensor([0, 5, 9])
    loss = avid_cma_loss(v, a, idx, bank, n_negatives=7, temperature=0.5, cma_k=2, cma_weight=0.25,
                         generator=torch.Generator().manual_seed(3))
    neg = bank.sample_negatives(idx, 7, torch.Generator().manual_seed(3)); pos = bank.cma_positives(idx, 2)
    ref = (memory_nce(v, bank.get('audio', idx), bank.get('audio', neg), 0.5) + memory_nce(a, bank.get('video', idx), bank.get('video', neg), 0.5)
           + 0.25 * (memory_nce(v, bank.get('video', pos), bank.get('video', neg), 0.5) + memory_nce(a, bank.get('audio', pos), bank.get('audio', neg), 0.5)))
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)


def test_cma_positives_chunked_equals_full_matrix():
    bank = MemoryBank(97, 6, seed=2)
    idx = torch.tensor([0, 13, 96, 50])
    agree = torch.minimum(bank.bank_video[idx] @ bank.bank_video.t(), bank.bank_audio[idx] @ bank.bank_audio.t())
    agree[torch.arange(4), idx] = -float('inf')
    ref = agree.topk(5, dim=1).indices
    got = bank.cma_positives(idx, 5, chunk_size=10)
    assert torch.equal(got.sort(1).values, ref.sort(1).values)
    assert not (got == idx[:, None]).any()


def test_memory_bank_in_place_and_sampling_uniform():
    bank = MemoryBank(1000, 16)
    ptr = bank.bank_audio.data_ptr()
    idx = torch.tensor([5, 999, 0])
    bank.update('audio', idx, torch.randn(3, 16))
    assert bank.bank_audio.data_ptr() == ptr and torch.allclose(bank.bank_audio.norm(dim=1), torch.ones(1000))
    neg = bank.sample_negatives(torch.tensor([500] * 4), 50000, torch.Generator().manual_seed(0))
    assert not (neg == 500).any()
    counts = torch.bincount(neg.flatten(), minlength=1000).double()
    counts = torch.cat([counts[:500], counts[501:]])
    assert counts.std() / counts.mean() < 0.1  # ~uniform over the 999 others (expected ~0.067)


@pytest.mark.parametrize('name', ['info_nce', 'info_nce_sym_extra', 'nt_xent', 'cross_modal',
                                  'memory_nce', 'triplet_ranking', 'margin', 'triplet_margin', 'composition'])
def test_gradcheck_float64(name):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=D64, requires_grad=True)
    fns = {
        'info_nce': (lambda q, k: info_nce(q, k, 0.5), (r(4, 3), r(4, 3))),
        'info_nce_sym_extra': (lambda q, k, e: info_nce(q, k, 0.5, symmetric=True, extra_negatives=e), (r(4, 3), r(4, 3), r(2, 3))),
        'nt_xent': (lambda a, b: nt_xent(a, b, 0.5), (r(4, 3), r(4, 3))),
        'cross_modal': (lambda a, b: cross_modal_nce(a, b, 0.5), (r(4, 3), r(4, 3))),
        'memory_nce': (lambda q, p, n: memory_nce(q, p, n, 0.5), (r(3, 4), r(3, 2, 4), r(3, 5, 4))),
        'triplet_ranking': (lambda t, v: triplet_ranking_loss(t, v, 0.2, hardest=False), (r(4, 3), r(4, 3))),
        'margin': (lambda a, p, n: margin_contrastive_loss(a, p, n, margin=3.), (r(3, 4), r(3, 4), r(3, 2, 4))),
        'triplet_margin': (lambda a, p, n: triplet_margin_loss(a, p, n, margin=5.), (r(3, 4), r(3, 4), r(3, 4))),
        'composition': (composition_loss, (r(3, 4), r(3, 4))),
    }
    fn, args = fns[name]
    assert torch.autograd.gradcheck(fn, args)


def test_detach_keys_is_a_stop_gradient():
    # not a function's derivative (so no gradcheck): video's gradient comes from the video->audio direction only
    v, a = unit(4, 3, seed=30).requires_grad_(True), unit(4, 3, seed=31).requires_grad_(True)
    gv, ga = torch.autograd.grad(cross_modal_nce(v, a, 0.5, detach_keys=True), (v, a))
    rv, = torch.autograd.grad(0.5 * info_nce(v, a.detach(), 0.5), v)
    ra, = torch.autograd.grad(0.5 * info_nce(a, v.detach(), 0.5), a)
    assert torch.allclose(gv, rv, atol=1e-7) and torch.allclose(ga, ra, atol=1e-7)
    assert cross_modal_nce(v, a, 0.5, detach_keys=True).item() == pytest.approx(cross_modal_nce(v, a, 0.5).item())


def test_hardest_triplet_gradcheck_away_from_ties():
    t = torch.tensor([[1., 0.1, 0.], [0., 1., 0.3], [0.2, 0., 1.]], dtype=D64, requires_grad=True)
    v = torch.tensor([[0.9, 0.3, 0.1], [0.3, 0.8, 0.], [0., 0.4, 0.9]], dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: triplet_ranking_loss(a, b, 0.5), (t, v))


def test_limits():
    same = torch.ones(5, 4, dtype=D64)
    assert info_nce(same, same).item() == pytest.approx(math.log(5))
    assert cross_modal_nce(same, same).item() == pytest.approx(math.log(5))
    assert nt_xent(same, same).item() == pytest.approx(math.log(9))
    q, k = unit(6, 8, seed=20), unit(6, 8, seed=21)
    s = q @ k.t()
    hinge = (s - s.diag()[:, None]).fill_diagonal_(-1e9).amax(1).clamp_min(0).mean().item()
    for t in (1e-3, 1e-5):
        assert t * info_nce(q, k, t).item() == pytest.approx(hinge, abs=20 * t)
    assert torch.isfinite(info_nce(q.float(), k.float(), 1e-7))  # stable log-sum-exp in float32
    assert info_nce(q, k, 1e6).item() == pytest.approx(math.log(6), abs=1e-5)  # infinite temperature: uniform


def test_errors_name_the_argument():
    q = unit(4, 3)
    cases = [
        (lambda: info_nce(q, q[:3]), 'key must have 4 rows'),
        (lambda: info_nce(q, unit(4, 5)), 'key must have embedding size 3'),
        (lambda: info_nce(q, q, -1.), 'temperature'),
        (lambda: info_nce(q[:0], q[:0]), 'at least one row'),
        (lambda: info_nce(q, q, extra_negatives=unit(2, 5)), 'extra_negatives'),
        (lambda: info_nce(q.masked_fill(torch.eye(4, 3, dtype=torch.bool), float('nan')), q), 'query contains NaN'),
        (lambda: cross_modal_nce(q, q[:2]), 'audio must have 4 rows'),
        (lambda: nt_xent(q, q[:1]), 'z2'),
        (lambda: memory_nce(q, q, q), 'negatives must have 3 dimensions'),
        (lambda: triplet_ranking_loss(q[:1], q[:1]), 'at least 2 rows'),
        (lambda: triplet_margin_loss(q, q, q[:2]), 'negative must have 4 rows'),
        (lambda: composition_loss(q, unit(4, 2)), 'composed'),
        (lambda: MemoryBank(1, 4), 'n must be'),
        (lambda: MemoryBank(10, 4).sample_negatives(torch.tensor([1]), 0), 'n_negatives'),
        (lambda: MemoryBank(10, 4).cma_positives(torch.tensor([1]), 10), 'k must be'),
        (lambda: MemoryBank(10, 4).update('depth', torch.tensor([1]), torch.randn(1, 4)), 'modality must be'),
        (lambda: MemoryBank(10, 4).update('video', torch.tensor([1]), torch.randn(2, 4)), 'features must have 1 rows'),
    ]
    for fn, msg in cases:
        with pytest.raises((ValueError, TypeError), match=msg): fn()


def test_all_gather_is_identity_without_group():
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x and all_gather_rows(x) is x


# ---------- the real thing: 2 gloo processes on CPU ----------
B, D, TAU = 4, 5, 0.3


def _global_inputs():
    g = torch.Generator().manual_seed(123)
    return F.normalize(torch.randn(2 * B, D, generator=g, dtype=D64), dim=1), F.normalize(torch.randn(2 * B, D, generator=g, dtype=D64), dim=1)


def _losses(v, a, distributed):
    return {'info_nce': lambda: info_nce(v, a, TAU, distributed=distributed),
            'symmetric': lambda: info_nce(v, a, TAU, symmetric=True, distributed=distributed),
            'cross_modal': lambda: cross_modal_nce(v, a, TAU, distributed=distributed),
            'cross_modal_detach': lambda: cross_modal_nce(v, a, TAU, detach_keys=True, distributed=distributed)}


def _worker(rank, world, out_dir):
    if True:
        V, A = _global_inputs()
        res = {}
        for name in _losses(V, A, True):
            v = V[rank * B:(rank + 1) * B].clone().requires_grad_(True)  # different rows on each rank
            a = A[rank * B:(rank + 1) * B].clone().requires_grad_(True)
            loss = _losses(v, a, True)[name]()
            loss.backward()
            res[name] = (loss.detach(), v.grad.clone(), a.grad.clone())
        x = torch.full((B + rank, 2), float(rank))  # unequal sizes must fail clearly
        try: all_gather_with_grad(x); res['unequal'] = 'no error'
        except ValueError as e: res['unequal'] = str(e)
        res['rows'] = all_gather_rows(torch.arange(3 * rank, 4 * rank + 2))   # no gradient, any dtype, unequal sizes
        torch.save(res, os.path.join(out_dir, f'rank{rank}.pt'))


def test_all_gather_two_gloo_processes_match_one_process(gloo):
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        # spawn, not fork: a forked child can deadlock on the parent's intra-op thread pool
        gloo(_worker, world, tmp)
        res = [torch.load(os.path.join(tmp, f'rank{r}.pt')) for r in range(world)]
    V, A = _global_inputs()
    for name in _losses(V, A, False):
        v, a = V.clone().requires_grad_(True), A.clone().requires_grad_(True)
        loss = _losses(v, a, False)[name]()
        loss.backward()
        # each rank's loss is the mean over its own rows; the global loss is their mean
        dist_loss = sum(r[name][0] for r in res) / world
        assert abs(dist_loss.item() - loss.item()) < 1e-6, name
        for r in range(world):
            # gradients are summed over ranks by the gather; DDP's average (divide by world) gives the global gradient
            assert torch.allclose(res[r][name][1] / world, v.grad[r * B:(r + 1) * B], atol=1e-6), (name, r)
            assert torch.allclose(res[r][name][2] / world, a.grad[r * B:(r + 1) * B], atol=1e-6), (name, r)
    assert all('same number of rows' in r['unequal'] for r in res)
    assert all(r['rows'].tolist() == [0, 1, 3, 4, 5] for r in res)   # rank 0: [0, 1], rank 1: [3, 4, 5], in rank order


def test_binary_nce_matches_loop_and_gradcheck():
    q, p, n = unit(3, 4, seed=40), unit(3, 2, 4, seed=41), unit(3, 5, 4, seed=42)
    t, N = 0.5, 100
    z = N * float(torch.exp(torch.einsum('bd,bkd->bk', q, n) / t).mean())
    ref = 0.
    for i in range(3):
        h = lambda y: (math.exp(float(q[i] @ y) / t) / z) / (math.exp(float(q[i] @ y) / t) / z + 5 / N)
        ref += sum(-math.log(h(y)) for y in p[i]) / 2 + sum(-math.log(1 - h(x)) for x in n[i])
    assert memory_nce(q, p, n, t, kind='nce', n_data=N).item() == pytest.approx(ref / 3, rel=1e-10)
    assert memory_nce(q, p, n, t, kind='nce', n_data=N, z=z).item() == pytest.approx(ref / 3, rel=1e-10)
    g = torch.Generator().manual_seed(0)
    args = tuple(torch.randn(*s, generator=g, dtype=D64, requires_grad=True) for s in [(3, 4), (3, 2, 4), (3, 5, 4)])
    assert torch.autograd.gradcheck(lambda a, b, c: memory_nce(a, b, c, 0.5, kind='nce', n_data=50, z=40.), args)
    with pytest.raises(ValueError, match='kind must be'): memory_nce(q, p, n, kind='binary')
    bank = MemoryBank(20, 4, dtype=D64)
    assert torch.isfinite(avid_cma_loss(q, q, torch.tensor([1, 2, 3]), bank, n_negatives=8, kind='nce', cma_k=2))


def test_avid_cma_loss_argument_errors():
    bank = MemoryBank(20, 4)                                               # float32 rows
    v, a, idx = unit(3, 4, seed=13), unit(3, 4, seed=14), torch.tensor([0, 5, 9])   # float64 features
    with pytest.raises(TypeError, match=r'video is torch.float64 .* bank holds torch.float32'):
        avid_cma_loss(v, a, idx, bank, n_negatives=4)
    with pytest.raises(TypeError, match=r'audio is torch.float64'):
        avid_cma_loss(v.float(), a, idx, bank, n_negatives=4)
    assert torch.isfinite(avid_cma_loss(v.float(), a.float(), idx, bank, n_negatives=4, cma_k=2))   # the fix the message names
    for kw, msg in [(dict(cma_k=-1), r'cma_k must be an int in \[0, 19\]'), (dict(cma_k=20), r'cma_k must be an int in \[0, 19\]'),
                    (dict(cma_k=1.5), 'cma_k'), (dict(cma_k=True), 'cma_k'),
                    (dict(cma_weight=-0.1), r'cma_weight must be in \[0, inf\)'), (dict(cma_weight=float('inf')), 'cma_weight'),
                    (dict(cma_weight=float('nan')), 'cma_weight')]:
        with pytest.raises(ValueError, match=msg):
            avid_cma_loss(v.float(), a.float(), idx, bank, n_negatives=4, **kw)
    with pytest.raises(TypeError, match='cma_weight must be a real number'):
        avid_cma_loss(v.float(), a.float(), idx, bank, n_negatives=4, cma_k=1, cma_weight='1')
    # cma_weight = 0 leaves exactly the AVID term
    g = lambda: torch.Generator().manual_seed(0)
    assert avid_cma_loss(v.float(), a.float(), idx, bank, 4, cma_k=2, cma_weight=0., generator=g()).item() == \
        pytest.approx(avid_cma_loss(v.float(), a.float(), idx, bank, 4, generator=g()).item(), abs=1e-6)


@pytest.mark.parametrize('fn,args,msg', [
    (margin_contrastive_loss, (unit(4, 3), unit(3, 3)), 'positive must have 4 rows'),
    (margin_contrastive_loss, (unit(4, 3), unit(4, 5)), 'positive must have embedding size 3'),
    (margin_contrastive_loss, (unit(4, 3), unit(4, 3), unit(3, 2, 3)), 'negatives must have 4 rows'),
    (margin_contrastive_loss, (unit(4, 3), unit(4, 3), unit(4, 2, 5)), 'negatives must have embedding size 3'),
    (margin_contrastive_loss, (unit(4, 3), unit(4, 3), unit(4, 3)), 'negatives must have 3 dimensions'),
    (margin_contrastive_loss, (unit(1, 3), unit(1, 3)), 'at least 2 rows'),
    (triplet_ranking_loss, (unit(4, 3), unit(5, 3)), 'video must have 4 rows'),
    (triplet_ranking_loss, (unit(5, 3), unit(4, 3)), 'video must have 5 rows'),
    (triplet_ranking_loss, (unit(4, 3), unit(4, 2)), 'video must have embedding size 3'),
    (triplet_ranking_loss, (unit(4, 3)[None], unit(4, 3)), 'text must have 2 dimensions'),
])
def test_margin_and_triplet_ranking_shape_errors(fn, args, msg):
    with pytest.raises(ValueError, match=msg): fn(*args)


def test_avid_cma_loss_with_negatives_drawn_by_the_caller():
    torch.manual_seed(0)
    bank = MemoryBank(20, 8, seed=0)
    v, a = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    idx = torch.tensor([0, 5, 9, 19])
    neg = bank.sample_negatives(idx, 16, torch.Generator().manual_seed(1))
    drawn = avid_cma_loss(v, a, idx, bank, n_negatives=16, cma_k=3, generator=torch.Generator().manual_seed(1))
    given = avid_cma_loss(v, a, idx, bank, cma_k=3, negatives=neg)
    assert torch.equal(drawn, given)
    bad = neg.clone(); bad[2, 0] = 9                     # row 2 is sample 9: its own memory is not a negative
    with pytest.raises(ValueError, match="own index"): avid_cma_loss(v, a, idx, bank, negatives=bad)
    with pytest.raises(ValueError, match="negatives"): avid_cma_loss(v, a, idx, bank, negatives=neg[:3])
    with pytest.raises(ValueError, match="negatives"): avid_cma_loss(v, a, idx, bank, negatives=neg + 20)


def test_avid_cma_loss_fixed_normalisers_per_term():
    "z normalises the cross-modal terms (eq. 1) and z_cma the CMA terms (eq. 2): their scores live on different scales."
    torch.manual_seed(0)
    bank = MemoryBank(20, 8, seed=0)
    v, a = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    idx = torch.tensor([0, 5, 9, 19])
    neg = bank.sample_negatives(idx, 16, torch.Generator().manual_seed(1))
    base = avid_cma_loss(v, a, idx, bank, kind='nce', negatives=neg, z=5.)
    both = avid_cma_loss(v, a, idx, bank, kind='nce', negatives=neg, z=5., cma_k=3, z_cma=7.)
    pos = bank.cma_positives(idx, 3)
    cma = sum(memory_nce(q, bank.get(m, pos), bank.get(m, neg), 0.07, kind='nce', n_data=20, z=7.) for q, m in ((v, 'video'), (a, 'audio')))
    assert torch.allclose(both, base + cma)
    assert not torch.allclose(both, avid_cma_loss(v, a, idx, bank, kind='nce', negatives=neg, z=5., cma_k=3, z_cma=50.))
