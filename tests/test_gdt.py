"Heavier checks of avlearn.gdt: eq. 1 against a literal loop, the sampler on many random settings, a real 2-process gloo gather, the full-scale config."
import math, os, tempfile
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.distributed as dist
import torch.multiprocessing as mp
from avlearn.papers.gdt import (MODES, Factor, GDTSpec, hierarchical_sample, contrast_matrix, weight_matrix, batch_properties,
                         gdt_nce, gathered_gdt_nce, av_spec, theorem1_variances, simulate_theorem1, factor_batch_size)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ref_eq1(z, c, w, t):
    "Eq. 1 of seed 004 ch. 2 written as a literal double sum (float64)."
    B, tot = z.shape[0], 0.
    for a in range(B):
        den = sum(w[a, k] * math.exp(float(z[a] @ z[k]) / t) for k in range(B))
        for b in range(B):
            if c[a, b] and w[a, b]: tot += -(float(z[a] @ z[b]) / t - math.log(den))
    return tot


@pytest.mark.parametrize('weight', ['simclr', 'cross_modal'])
@pytest.mark.parametrize('ts,tr', [('d', 'i'), ('i', 'd'), ('d', 'd'), ('i', 'i')])
def test_gdt_nce_matches_literal_eq1(weight, ts, tr):
    g = torch.Generator().manual_seed(0)
    spec = av_spec(3, ts, tr, n_videos=10, n_shifts=4).check()
    lab = hierarchical_sample(spec, g)
    z = F.normalize(torch.randn(spec.K, 6, generator=g, dtype=torch.float64), dim=1)
    c, w = contrast_matrix(lab, spec), weight_matrix(lab, spec, weight)
    got = gdt_nce(z, c, w, 0.2, reduction='sum').item()
    assert abs(got - ref_eq1(z, c, w, 0.2)) < 1e-8 * max(1, abs(got))
    n_pos = int((c & w).sum())
    assert abs(gdt_nce(z, c, w, 0.2).item() - got / n_pos) < 1e-10


def _random_factors(rng, n: int, k_hi: int) -> list:
    "n random factors f0, f1, ...: mode d / i / ., k in [1, k_hi) (1 when unused), a space in [k, k + k_hi) or (30%) continuous."
    fs = []
    for j in range(n):
        mode = str(rng.choice(list(MODES)))
        k = 1 if mode == '.' else int(rng.integers(1, k_hi))
        fs.append(Factor(f'f{j}', mode, k, None if rng.random() < .3 else int(rng.integers(k, k + k_hi))))
    return fs


def test_sampler_on_many_random_settings_with_cross_modal_weight():
    rng, g = np.random.default_rng(1), torch.Generator().manual_seed(1)
    ok = 0
    for _ in range(500):
        fs = [Factor('m', 'i', 2, space=2)] + _random_factors(rng, int(rng.integers(1, 5)), 4)
        rng.shuffle(fs)
        spec = GDTSpec(fs)
        try: spec.check()
        except ValueError:
            assert spec.K_V < 2 or spec.K_I < 2
            continue
        lab = hierarchical_sample(spec, g)
        for weight in ('simclr', 'cross_modal'):
            p = batch_properties(lab, spec, weight)
            assert p['i'] and p['ii'] and p['iii'] and p['balanced'], (spec, weight, p)
        ok += 1
    assert ok > 150


def test_unused_factors_are_drawn_once_per_distinctive_branch():
    "An unused factor (k = 1) takes one value per combination of distinctive values, shared by all invariant leaves."
    rng, g = np.random.default_rng(2), torch.Generator().manual_seed(2)
    n_checked = 0
    for _ in range(300):
        fs = [Factor('i', 'd', int(rng.integers(2, 4)), space=20), Factor('u', '.', 1, space=int(rng.integers(3, 8))),
              Factor('m', 'i', 2, space=2)] + _random_factors(rng, int(rng.integers(0, 3)), 3)
        rng.shuffle(fs)
        spec = GDTSpec(fs)
        lab = hierarchical_sample(spec, g)
        d_cols = [j for j, f in enumerate(spec.factors) if f.mode == 'd']
        _, branch = torch.unique(lab[:, d_cols], dim=0, return_inverse=True)
        for j, f in enumerate(spec.factors):
            if f.mode != '.': continue
            for b in branch.unique():
                assert lab[branch == b, j].unique().numel() == 1, (spec, f.name, lab)
            n_checked += 1
        p = batch_properties(lab, spec, 'cross_modal')
        assert p['i'] and p['ii'] and p['iii'] and p['balanced'], (spec, p)
    assert n_checked >= 300


def test_row_e_audio_and_video_views_share_the_time_shift():
    "Table 1 row (e): a single shift per video (line 392), so its visual and audio views are synchronised."
    spec = av_spec(8, '.', '.', 'av', n_videos=100, n_shifts=5).check()
    g = torch.Generator().manual_seed(0)
    tau, m, i = spec.index('tau'), spec.index('m'), spec.index('i')
    shifts = []
    for _ in range(50):
        lab = hierarchical_sample(spec, g)
        for v in lab[:, i].unique():
            rows = lab[lab[:, i] == v]
            assert sorted(rows[:, m].tolist()) == [0, 1]              # one video view and one audio view ...
            assert rows[0, tau] == rows[1, tau]                       # ... cut at the same moment
            shifts.append(int(rows[0, tau]))
    assert len(set(shifts)) == 5                                      # the shift itself is still random


def test_sampler_is_uniform_over_values():
    "Each branch draws without replacement, uniformly: over many batches every value of a factor is used equally often."
    spec = GDTSpec([Factor('i', 'd', 3, space=6), Factor('tau', 'i', 2, space=5)])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(6)
    for _ in range(3000):
        counts += torch.bincount(hierarchical_sample(spec, g)[:, 0], minlength=6)
    freq = counts / counts.sum()
    assert (freq - 1 / 6).abs().max() < 0.01


def test_factor_batch_size_and_errors():
    spec = av_spec(1, 'd', 'i', n_videos=100, n_shifts=3)
    assert factor_batch_size(64, spec)['i'].k == 8
    with pytest.raises(ValueError, match='does not factor'): factor_batch_size(60, spec)
    with pytest.raises(ValueError, match='at least 1'): contrast_matrix(torch.zeros(0, 5, dtype=torch.long), spec)
    with pytest.raises(ValueError, match='shape'): contrast_matrix(torch.zeros(4, 3, dtype=torch.long), spec)
    with pytest.raises(TypeError, match='integer'): contrast_matrix(torch.zeros(4, 5), spec)


def test_theorem1_exact_small_case():
    "With K_I = 1 and zero within-stratum noise GDT is exact (variance 0) while the direct estimate is not."
    L = torch.tensor([[0., 2.], [2., 1.]])
    th = theorem1_variances(L, torch.zeros(2, 2), K_I=1)
    assert th['gdt'] == 0 and th['direct'] > 0
    sim = simulate_theorem1(L, torch.zeros(2, 2), K_I=1, n_batches=4000, generator=torch.Generator().manual_seed(0))
    assert sim['gdt_var'] < 1e-12 and abs(sim['direct_var'] / th['direct'] - 1) < 0.1


# ---------- 2 gloo processes: gathered keys give the single-process loss and gradients ----------
def _worker(rank, world, out_dir):
    if True:
        spec = av_spec(3, 'd', 'i', n_videos=3, n_shifts=3).check()
        g = torch.Generator().manual_seed(7)
        labs = [hierarchical_sample(spec, g) for _ in range(world)]
        Z = F.normalize(torch.randn(world * spec.K, 5, generator=g, dtype=torch.float64), dim=1)
        z = Z[rank * spec.K:(rank + 1) * spec.K].clone().requires_grad_(True)
        loss = gathered_gdt_nce(z, labs[rank], spec, 'cross_modal', 0.3)
        loss.backward()
        torch.save(dict(loss=loss.detach(), grad=z.grad.clone(), labs=labs, Z=Z), os.path.join(out_dir, f'rank{rank}.pt'))


def test_gathered_gdt_nce_two_processes(gloo):
    world = 2
    with tempfile.TemporaryDirectory() as d:
        gloo(_worker, world, d)
        res = [torch.load(os.path.join(d, f'rank{r}.pt')) for r in range(world)]
    spec = av_spec(3, 'd', 'i', n_videos=3, n_shifts=3)
    # the single-process reference: both processes' batches as one, videos renumbered
    labs = [l.clone() for l in res[0]['labs']]
    for r, l in enumerate(labs):
        l[:, 0] += r * 3; l[:, 4] += r * len(l) * 5
    L = torch.cat(labs)
    Z = res[0]['Z'].clone().requires_grad_(True)
    full = gdt_nce(Z, contrast_matrix(L, spec), weight_matrix(L, spec, 'cross_modal'), 0.3)
    full.backward()
    mean_loss = sum(r['loss'] for r in res) / world           # equal numbers of positives on each process
    assert torch.allclose(mean_loss, full.detach(), atol=1e-12)
    grad = torch.cat([r['grad'] for r in res]) / world          # DDP averages over processes
    assert torch.allclose(grad, Z.grad, atol=1e-12)


# ---------- 2 gloo processes through the real Trainer: DDP must sync GDTMethod's gradients ----------
# a tiny toy world: 16-frame (1 s) clips, 0.5 s windows at 2 shifts, width-4 encoders, 3 Adam steps of 2 videos per process
DDP_TINY = ['method=gdt', 'method_args.n_shifts=2', 'method_args.window_s=0.5', 'method_args.temperature=0.1',
            'data.kind=toy', 'data.n_train=16', 'data.n_test=4', 'data.batch_size=2', 'data.cache=false',
            'data.world={n_frames: 16, size: 16}', 'model.video_args={width: 4, out_dim: 16, norm: group}',
            'model.audio_args={width: 4, out_dim: 16, norm: group}', 'model.proj_dim=8', 'optim.warmup_epochs=0',
            'max_steps=3', 'checkpoint_every=1000', 'deterministic=true', 'precision=fp32']
DDP_ROWS = {'l': [],                                                   # audio-visual: every parameter gets a gradient
            'a': ['method_args.modality=v', 'method_args.time_shift=.', 'method_args.time_reversal=.', 'method_args.k_aug=2']}


def _ddp_worker(rank, world, out_dir):
    if True:
        from avlearn.engine.trainer import Trainer
        from avlearn.engine.config import load_config
        from avlearn.dist import unwrap as _unwrap
        for row, extra in DDP_ROWS.items():   # the same process group for both runs (the Trainer joins an existing one)
            out = os.path.join(out_dir, row); os.makedirs(out, exist_ok=True)
            tr = Trainer(load_config(os.path.join(ROOT, 'configs', 'demo.yaml'), DDP_TINY + extra), out, resume=False, progress=False)
            init = {k: v.detach().clone() for k, v in _unwrap(tr.model).named_parameters()}
            tr.fit()
            final = {k: v.detach().clone() for k, v in _unwrap(tr.model).named_parameters()}
            torch.save(dict(init=init, final=final, step=tr.step), os.path.join(out, f'rank{rank}.pt'))


def test_ddp_gdt_method_keeps_ranks_in_sync(monkeypatch, gloo):
    "Under DDP the two ranks see different videos and transformations but must end with identical parameters."
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')      # gloo on CPU even on a GPU machine
    world = 2
    with tempfile.TemporaryDirectory() as d:
        gloo(_ddp_worker, world, d)
        res = {row: [torch.load(os.path.join(d, row, f'rank{r}.pt')) for r in range(world)] for row in DDP_ROWS}
    for row, (r0, r1) in res.items():
        assert r0['step'] == r1['step'] == 3
        moved = {k: float((r0['final'][k] - r0['init'][k]).abs().max()) for k in r0['init']}
        assert max(v for k, v in moved.items() if k.startswith('video_encoder')) > 1e-4, (row, 'no training happened')
        if row == 'a':   # video only: the audio side never gets a gradient (DDP was told: find_unused_parameters)
            assert max(v for k, v in moved.items() if k.startswith('audio')) == 0
        diff = {k: float((r0['final'][k] - r1['final'][k]).abs().max()) for k in r0['final']}
        worst = max(diff, key=diff.get)
        assert diff[worst] < 1e-6, f"row ({row}): ranks diverged, e.g. {worst} differs by {diff[worst]:.2e}: gradients not synced"


@pytest.mark.slow
def test_full_scale_config_dry_run():
    "configs/gdt_k400.yaml builds R(2+1)D-18 + audio ResNet-9 and runs 2 GDT steps on synthetic tensors of the real shapes."
    from avlearn.engine.trainer import train
    with tempfile.TemporaryDirectory() as d:
        tr = train(os.path.join(ROOT, 'configs', 'gdt_k400.yaml'), d, dry_run=True, progress=False)
        assert tr.step == 2


# ---------- the miniature trains through the engine (train_in_process, GDTMethod.loss) ----------
TINY_MINI = dict(n_train=32, n_test=16, steps=4, probe_at=(2,), k_videos=4, width=4, proj_dim=8)


def test_train_row_through_the_engine_resumes_exactly():
    "A row probed mid-run (the engine resumes it from its checkpoint) is the same run as one without a pause."
    from avlearn.papers.gdt import Miniature, toy_time_world, train_row
    train, test = toy_time_world(32, 16, seed=0, time_only=True)
    paused = train_row('k', Miniature(**TINY_MINI), 0, train, test)
    straight = train_row('k', Miniature(**TINY_MINI | dict(probe_at=())), 0, train, test)
    assert sorted(paused['probes']) == [0, 2, 4] and sorted(straight['probes']) == [0, 4]
    assert len(paused['losses']) == 4 and all(math.isfinite(l) for l in paused['losses'])
    assert paused['losses'] == straight['losses']                     # GDT's random draws survive the checkpoint too
    assert paused['probes'][4] == straight['probes'][4] and paused['probes'][0] == straight['probes'][0]
    assert set(paused['probes'][4]) == {'action', 'size'}             # time-only world: shape, colour, scene fixed


def test_claims_run_on_a_tiny_miniature(monkeypatch):
    "The registered claims train their rows once per seed and budget and return a value in the paper's direction."
    import avlearn.papers.gdt as gdt
    from avlearn.engine.method import claims_of, claim_verdict
    monkeypatch.setattr(gdt, 'CLAIM_MINIATURES', {'fast': gdt.Miniature(**TINY_MINI)})
    monkeypatch.setattr(gdt, '_CLAIM_CACHE', {})
    claims = {c.name: c for c in claims_of('gdt')}
    assert set(claims) == {'table_a1_cross_beats_within', 'table_a1_default_world', 'table1_reversal_distinctive',
                           'table1_shift_distinctive', 'theorem1_lower_variance'}
    a1 = claims['table_a1_cross_beats_within'].run(0, 'fast')
    assert a1['value'] == a1['ours'] - a1['reference'] and set(a1['rows']) == set(gdt.CLAIM_ROWS['time-only'])
    assert set(a1['rows']['e']['probes'][0]) == {'action', 'size'}      # time-only world: shape, colour, scene fixed
    assert len(gdt._CLAIM_CACHE) == 1
    k = claims['table1_reversal_distinctive'].run(0, 'fast')           # reuses the rows trained for A.1
    assert len(gdt._CLAIM_CACHE) == 1 and math.isfinite(k['value']) and 'rows' not in k
    with pytest.raises(ValueError, match='budget must be one of'): gdt.claim_rows(0, 'huge')
    with pytest.raises(ValueError, match='world must be one of'): gdt.claim_rows(0, 'fast', 'flat')
    th = [claims['theorem1_lower_variance'].run(s, 'fast') for s in range(3)]
    assert claim_verdict([t['value'] for t in th])['verdict'] == 'holds'
    assert all(abs(t['ratio'] / t['predicted_ratio'] - 1) < 0.3 for t in th)   # Theorem 1's (appendix) prediction
