"""STiCA: the issue's bad inputs as clear errors, eq. 6's pairs against brute force, masked pooling of shorter crops,
gradients of crops, eq. 7 under 2 gloo processes against one process, the Kinetics-400 config at its real shapes (on
the meta device; a dry run is slow) and the notebook's full-scale commands."""
import copy, os, random, tempfile
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from fastcore.test import test_fail as check_fails
from avlearn.engine.config import load_config
from avlearn.engine.method import METHODS, claims_of
from avlearn.papers.stica import (STiCA, TemporalPooling, crop_offsets, crop_sizes, feature_crop, stica_loss,
                                  view_names, within_modal_pairs, OrderedActivityWorld, order_pairs, ORDER_ACTIVITIES)

ROOT = Path(__file__).resolve().parents[1]
TINY = ['method=stica', 'model.video_args={width: 4}', 'model.audio_args={width: 4}', 'model.proj_dim=8',
        'method_args={medium_crops: [[2, null, 2], [1, 3, null]], small_crops: [[2, null, 1], [1, 2, null]], ffn_dim: 0}']


def _method(*extra):
    return STiCA(load_config(None, TINY + list(extra)), 8)


def _batch(size=48, B=3):
    g = torch.Generator().manual_seed(0)
    return dict(video=torch.rand(B, 3, 16, size, size, generator=g), audio=0.1 * torch.randn(B, 16000, generator=g))


# ---------- the bad inputs ----------
def test_crop_larger_than_the_feature_map():
    meth = _method('method_args.medium_crops=[[1, null, 4]]')
    check_fails(lambda: meth.loss(meth.build_model(), _batch()), contains="spatial crop of 4x4 is larger than the feature map's 3x3")
    check_fails(lambda: crop_offsets(torch.rand(2, 3), (4, 3, 3), (2, 4, 4)), contains='does not fit a feature map of 3')


def test_zero_crops():
    check_fails(lambda: load_config(None, TINY + ['method_args.medium_crops=[[0, null, 2]]']),
              contains='medium_crops holds zero crops, so eq. 6 has no term')
    check_fails(lambda: load_config(None, TINY + ['method_args.small_crops=[[1, null, 0]]']),
              contains='small_crops[0]: crop size must be None (whole axis) or an int >= 1')
    check_fails(lambda: feature_crop(torch.randn(1, 2, 4, 3, 3), torch.zeros(1, 3, dtype=torch.long), (0, 2, 2)),
              contains='crop of 0 along time')


def test_negative_m_or_n():
    check_fails(lambda: load_config(None, TINY + ['method_args.medium_crops=[[-2, null, 2]]']),
              contains='medium_crops[0]: the number of crops must be an int >= 0, got -2')
    check_fails(lambda: load_config(None, TINY + ['method_args.small_crops=[[-1, 2, null]]']),
              contains='small_crops[0]: the number of crops must be an int >= 0, got -1')
    check_fails(lambda: within_modal_pairs(2, 2, -1), contains='n must be an int >= 0')


def test_temporal_crop_longer_than_the_map():
    meth = _method('method_args.small_crops=[[1, 5, null]]')
    check_fails(lambda: meth.loss(meth.build_model(), _batch()), contains="temporal crop of 5 is longer than the feature map's T' = 4")
    check_fails(lambda: crop_sizes([(1, 9, None)], (8, 7, 7)), contains="temporal crop of 9 is longer than the feature map's T' = 8")


def test_other_bad_settings():
    check_fails(lambda: load_config(None, TINY + ['method_args.rgb_crops=1']), contains='lambda_vv > 0 needs rgb_crops >= 2')
    check_fails(lambda: load_config(None, TINY + ['method_args.pooling=max']), contains="method_args.pooling must be one of")
    check_fails(lambda: load_config(None, TINY + ['method_args={lambda_va: 0, lambda_vv: 0}']), contains='lambda_va + lambda_vv must be > 0')
    check_fails(lambda: load_config(None, TINY + ['method_args.crops=3']), contains='unknown key(s)')


# ---------- eq. 5 and 6 ----------
def test_pairs_match_brute_force():
    rng = random.Random(0)
    for _ in range(30):
        m, n = rng.randint(1, 6), rng.randint(0, 6)
        t1 = [(f'L1.M{k}', 'M') for k in range(1, m + 1)] + [(f'L1.S{k}', 'S') for k in range(1, n + 1)]
        t2 = [(a.replace('L1', 'L2'), kind) for a, kind in t1]
        brute = {(a, b) for a, ka in t1 for b, kb in t2 if not (ka == kb == 'S')}
        brute |= {(b, a) for a, b in brute}
        got = within_modal_pairs(2, m, n)
        assert set(got) == brute and len(got) == len(brute) == 2 * ((m + n) ** 2 - n ** 2)
        assert set(view_names(2, m, n)) >= {v for p in got for v in p}


def test_offsets_reach_every_position_uniformly():
    g = torch.Generator().manual_seed(1)
    off = crop_offsets(torch.rand(60000, 3, generator=g), (8, 7, 7), (4, 4, 6))
    for axis, room in enumerate((5, 4, 2)):
        counts = torch.bincount(off[:, axis], minlength=room).float()
        assert len(counts) == room and (counts / counts.mean() - 1).abs().max() < 0.04, counts


def test_crop_gradient_reaches_only_the_cropped_cells():
    fmap = torch.randn(2, 3, 4, 5, 5, requires_grad=True)
    off = torch.tensor([[1, 0, 2], [0, 3, 1]])
    feature_crop(fmap, off, (2, 2, 3)).sum().backward()
    mask = torch.zeros(2, 3, 4, 5, 5)
    mask[0, :, 1:3, 0:2, 2:5] = 1; mask[1, :, 0:2, 3:5, 1:4] = 1
    assert torch.equal(fmap.grad, mask)


# ---------- temporal pooling ----------
def test_masked_pooling_equals_the_short_sequence_alone():
    torch.manual_seed(0)
    pool = TemporalPooling('transformer', 8, layers=2, heads=2).eval()
    seqs = [torch.randn(2, 4, 8), torch.randn(3, 2, 8), torch.randn(1, 3, 8)]
    together = pool.pool_many(seqs)
    for s, t in zip(seqs, together): torch.testing.assert_close(t, pool(s), atol=1e-5, rtol=1e-5)
    pool.train()                                   # the training path (no fast path) masks the same way
    together = pool.pool_many(seqs)
    for s, t in zip(seqs, together): torch.testing.assert_close(t, pool(s), atol=1e-5, rtol=1e-5)


def test_padding_gets_no_gradient_and_changes_nothing():
    torch.manual_seed(0)
    pool = TemporalPooling('transformer', 8, layers=1, heads=2)
    x = torch.randn(2, 4, 8, requires_grad=True)
    pool(x, torch.tensor([2, 4])).sum().backward()
    assert x.grad[0, 2:].abs().max() == 0 and x.grad[0, :2].abs().max() > 0
    y = x.detach().clone(); y[0, 2:] = 1e3                       # whatever sits in the padding
    torch.testing.assert_close(pool(y, torch.tensor([2, 4])), pool(x.detach(), torch.tensor([2, 4])))


def test_pooling_switchable_at_pretraining_and_finetuning():
    batch = _batch()
    for pre in ('avg', 'transformer'):
        meth = _method(f'method_args.pooling={pre}', 'method_args.finetune_pooling=avg')
        model = meth.build_model()
        assert model.video_encoder.pool.kind == pre
        assert meth.finetune_encoder(model).pool.kind == 'avg'
        ft = meth.finetune_encoder(model, 'transformer')
        assert ft.pool.kind == 'transformer' and ft(batch['video']).shape == (3, 16)
        if pre == 'transformer':       # the pretrained transformer is kept, as a copy
            p0, p1 = next(model.video_encoder.pool.parameters()), next(ft.pool.parameters())
            assert torch.equal(p0, p1) and p0.data_ptr() != p1.data_ptr()


def test_every_view_trains_the_trunk():
    meth = _method()
    model = meth.build_model()
    loss, logs = meth.loss(model, _batch())
    loss.backward()
    assert set(logs) == {'L_vv', 'L_va'} and len(meth.pairs) == 2 * ((3 + 3) ** 2 - 3 ** 2)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.video_encoder.trunk.parameters())


# ---------- eq. 7 under DDP-style gathering ----------
def _worker(rank, world, tmp):
    z, za = _embeddings()
    B = za.shape[0] // world
    part = {k: v[rank * B:(rank + 1) * B] for k, v in z.items()}
    loss, _ = stica_loss(part, za[rank * B:(rank + 1) * B], within_modal_pairs(2, 2, 1), ['L1', 'L2'], distributed=True)
    torch.save(loss.detach(), os.path.join(tmp, f'rank{rank}.pt'))


def _embeddings():
    g = torch.Generator().manual_seed(7)
    z = {k: F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1) for k in view_names(2, 2, 1)}
    return z, F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)


def test_loss_on_two_gloo_processes_matches_one_process(gloo):
    with tempfile.TemporaryDirectory() as tmp:
        gloo(_worker, 2, tmp)
        per_rank = [torch.load(os.path.join(tmp, f'rank{r}.pt')) for r in range(2)]
    z, za = _embeddings()
    whole, _ = stica_loss(z, za, within_modal_pairs(2, 2, 1), ['L1', 'L2'])
    torch.testing.assert_close(sum(per_rank) / 2, whole)       # each rank: the mean over its rows, all keys gathered


# ---------- toy world and claims ----------
def test_order_world_and_claims():
    w = OrderedActivityWorld(n=20, seed=3, n_frames=16, size=32)
    assert w.n_classes('action') == 4 and len(order_pairs(w.activities)) == 2
    assert [f['actions'] for f in w.factors[:5]] == [ORDER_ACTIVITIES[f['action']] for f in w.factors[:5]]
    names = {c.name for c in claims_of('stica')}
    assert names == {'table3_cross_beats_within', 'table3_both_beat_cross', 'table3_feature_crops_help',
                     'table1c_transformer_beats_avg'}


# ---------- full scale ----------
def test_k400_config_at_real_shapes():
    cfg = load_config(ROOT / 'configs' / 'stica_k400.yaml')
    meth = METHODS['stica'](cfg, 8)
    assert (len(meth.names), len(meth.pairs)) == (20, 112)              # 2 x (1 + 4 + 5) views, 2((4+5)^2 - 5^2) terms
    model = meth.build_model()              # on the CPU: torchaudio's mel filterbank cannot be built on 'meta'
    trunk = copy.deepcopy(model.video_encoder.trunk).to('meta')
    fmap = trunk.feature_map(torch.zeros(2, 3, 30, 112, 112, device='meta'))
    assert tuple(fmap.shape) == (2, 512, 4, 7, 7)
    assert crop_sizes(meth.args.medium_crops, fmap.shape[2:]) == [(4, 6, 6)] * 2 + [(3, 7, 7)] * 2
    assert crop_sizes(meth.args.small_crops, fmap.shape[2:]) == [(4, 4, 4)] * 4 + [(2, 7, 7)]
    pool = model.video_encoder.pool
    assert pool.kind == 'transformer' and len(pool.encoder.layers) == 2
    layer = pool.encoder.layers[0]
    assert layer.self_attn.num_heads == 4 and layer.linear1.out_features == 2048 and not layer.norm_first


@pytest.mark.slow
def test_dry_run_k400_config(tmp_path):
    from avlearn.engine.trainer import train
    trainer = train(str(ROOT / 'configs' / 'stica_k400.yaml'), str(tmp_path), dry_run=True, progress=False)
    assert trainer.step == 2
    ft = trainer.method.finetune_encoder(trainer.model, 'transformer')
    with torch.no_grad(): assert ft.eval()(torch.rand(1, 3, 30, 112, 112)).shape == (1, 512)


def test_full_scale_commands_in_notebook_are_valid():
    "Every avlearn-train command of the notebook's 'At full scale' block parses with the real CLI and its config builds."
    import shlex
    import nbformat
    from fastcore.script import anno_parser
    from avlearn.engine.cli import train_cli
    nb = nbformat.read(ROOT / 'nbs' / 'papers' / '24_stica.ipynb', as_version=4)
    md = next(c.source for c in nb.cells if c.cell_type == 'markdown' and c.source.startswith('## At full scale'))
    block = md.split('```sh')[1].split('```')[0].replace('\\\n', ' ')
    parser = anno_parser(train_cli.__wrapped__)
    outs = {}
    for line in filter(None, (l.split('#')[0].strip() for l in block.splitlines())):
        args = shlex.split(line.replace('$(which avlearn-train)', 'avlearn-train'))
        if args[0] == 'python': assert (ROOT / args[1]).is_file(), line; continue
        if args[0] == 'torchrun': args = args[args.index('avlearn-train'):]
        assert args[0] == 'avlearn-train', line
        ns = parser.parse_args(args[1:])
        cfg = load_config(ROOT / ns.config, ns.set or ())
        outs[ns.out] = STiCA(cfg, 8)
    assert outs['runs/stica_default'].names == ['L1'] and outs['runs/stica_default'].args.pooling == 'avg'
    assert len(outs['runs/stica_k400'].pairs) == 112
