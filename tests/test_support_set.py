"""Support-set bottlenecks: the issue's bad inputs, eq. 1 against a brute-force reading (mean, not sum), eq. 3's
support sets (cross never sees its own clip; mixing of unequal lengths), eq. 4's order sensitivity, every variant
through the engine, the configs (load, build, feature-file dry run at the real shapes) and the notebook's commands."""
import shlex
from pathlib import Path
import numpy as np
import pytest
import torch
from fastcore.test import test_fail as check_fails
from avlearn.engine.config import load_config
from avlearn.engine.method import claims_of, train_in_process
from avlearn.papers.support_set import (SUPPORT_SETS, POOLINGS, PoolingHead, SupportSet, SupportSetModel,
                                        caption_targets, check_lengths, encode_captions, mix_sequences,
                                        support_set_loss, support_weights, toy_vocabulary, train_on_features,
                                        write_feature_manifest, FeatureManifest)

ROOT = Path(__file__).resolve().parents[1]
ARGS = ('{dim: 8, heads: 2, layers: 1, ffn_dim: 16, decoder_layers: 1, max_seconds: 4, max_tokens: 12, vocab: toy, '
        'in_dim: 6, dropout: 0.0}')
TINY = ['method=support_set', f'method_args={ARGS}']
VOC = toy_vocabulary()


def _model(**kw):
    torch.manual_seed(0)
    return SupportSetModel(in_dim=6, vocab_size=len(VOC), dim=8, layers=1, heads=2, ffn_dim=16, decoder_layers=1,
                           max_seconds=4, max_tokens=12, dropout=0.0, **kw)


def _batch(B=4):
    g = torch.Generator().manual_seed(0)
    texts = ['a big red ball grows bigger in the night', 'a small blue ball shrinks in the meadow',
             'a big green ball comes closer', 'a small red ball moves away'][:B]
    return torch.randn(B, 4, 6, generator=g), torch.tensor([4, 2, 3, 1][:B]), encode_captions(texts, VOC)


# ---------- the bad inputs ----------
def test_batch_of_one():
    f, l, t = _batch(1)
    check_fails(lambda: support_set_loss(_model(), f, l, t), contains='a batch of 1 clip has no negative')
    check_fails(lambda: support_weights(torch.randn(1, 4), torch.randn(1, 4), 'cross'),
                contains='cross-captioning needs a batch of at least 2 clips')
    assert support_weights(torch.randn(1, 4), torch.randn(1, 4), 'full').item() == 1.0   # defined for the others


def test_mismatched_batches():
    f, l, t = _batch()
    check_fails(lambda: support_set_loss(_model(), f, l, t[:3]), contains='features has 4 clips but tokens has 3')
    check_fails(lambda: _model()(f[:3], l[:3], t), contains='features has 3 clips but tokens has 4')
    meth = SupportSet(load_config(None, TINY), 8)
    check_fails(lambda: meth.loss(meth.build_model(), dict(video=f, text=['a ball'] * 3)),
                contains='features has 4 clips but tokens has 3')


def test_empty_and_unknown_captions():
    check_fails(lambda: encode_captions(['a ball', ''], VOC), contains='texts[1] is empty')
    check_fails(lambda: encode_captions(['!!', 'a ball'], VOC), contains='texts[0] is empty')
    t = encode_captions(['zorp blick', 'a ball'], VOC)
    assert t[0, :2].tolist() == [1, 1]
    inputs, targets = caption_targets(t)
    assert targets[0].tolist()[:3] == [0, 0, 3]                   # <unk> targets skipped, <eos> kept
    f, l, _ = _batch(2)
    loss, logs = support_set_loss(_model(), f, l, t)
    assert torch.isfinite(loss) and np.isfinite(logs['caption'])
    loss.backward()


# ---------- eq. 1 ----------
def test_contrastive_term_is_the_mean_hardest_negative_hinge():
    torch.manual_seed(1)
    f, l, t = _batch()
    m = _model()
    loss, logs = support_set_loss(m, f, l, t, 'none')
    out = m(f, l, t, 'none')
    s = torch.nn.functional.normalize(out['c_t'], dim=1) @ torch.nn.functional.normalize(out['c_v'], dim=1).t()
    B, brute = len(s), 0.0
    for i in range(B):
        brute += max(max(0.0, 0.2 - s[i, i].item() + s[i, j].item()) for j in range(B) if j != i)
        brute += max(max(0.0, 0.2 - s[i, i].item() + s[j, i].item()) for j in range(B) if j != i)
    assert abs(logs['contrast'] - brute / B) < 1e-5                 # 1/B: the mean, not VSE++'s sum


# ---------- eq. 3 ----------
def test_cross_captioning_never_sees_its_own_video():
    torch.manual_seed(0)
    seqs, valid = torch.randn(5, 3, 4), check_lengths(torch.tensor([3, 1, 2, 3, 3]), 5, 3)
    w = support_weights(torch.randn(5, 4), torch.randn(5, 4), 'cross')
    mixed = mix_sequences(w, seqs, valid)[0]
    for i in range(5):
        other = seqs.clone(); other[i] += 100.0
        assert torch.allclose(mix_sequences(w, other, valid)[0][i], mixed[i])


def test_mixing_matches_eq3_for_equal_lengths_and_renormalises_otherwise():
    torch.manual_seed(0)
    seqs, full = torch.randn(4, 3, 5), torch.ones(4, 3, dtype=torch.bool)
    w = support_weights(torch.randn(4, 5), torch.randn(4, 5), 'full')
    assert torch.allclose(mix_sequences(w, seqs, full)[0], torch.einsum('ij,jtd->itd', w, seqs), atol=1e-6)
    valid = check_lengths(torch.tensor([1, 3, 3, 3]), 4, 3)
    mixed, mv = mix_sequences(torch.eye(4)[[1, 0, 3, 2]] * 0.5 + torch.eye(4) * 0.5, seqs, valid)
    assert torch.allclose(mixed[0, 1:], seqs[1, 1:]) and mv.all()    # step 1-2 of clip 0: only clip 1 has them


def test_variants_weights():
    ct, cv = torch.randn(6, 4), torch.randn(6, 4)
    w = {k: support_weights(ct, cv, k) for k in SUPPORT_SETS[1:]}
    assert torch.equal(w['identity'], torch.eye(6)) and (w['cross'].diag() == 0).all()
    assert torch.allclose(w['hybrid'], (w['full'] + torch.eye(6)) / 2)
    for v in w.values(): assert torch.allclose(v.sum(1), torch.ones(6))


# ---------- eq. 4 ----------
def test_transformer_head_sees_order_and_mean_max_do_not():
    torch.manual_seed(0)
    x, valid = torch.randn(4, 5, 8), torch.ones(4, 5, dtype=torch.bool)
    rev = x.flip(1)
    for kind in POOLINGS:
        head = PoolingHead(kind, 8, layers=1, heads=2, ffn_dim=16, max_len=5).eval()
        same = torch.allclose(head(x, valid)[0], head(rev, valid)[0], atol=1e-5)
        assert same == (kind != 'transformer'), kind


# ---------- the method through the engine ----------
@pytest.mark.parametrize('variant', SUPPORT_SETS)
def test_every_variant_trains_through_the_engine(variant):
    g = torch.Generator().manual_seed(0)
    texts = ['a red ball grows bigger', 'a blue ball shrinks', 'a big green ball', 'a ball in the sea'] * 2
    data = dict(video=torch.randn(8, 4, 6, generator=g), lengths=torch.tensor([4, 3, 2, 1] * 2),
                tokens=encode_captions(texts, VOC))
    tr = train_in_process(None, TINY + [f'method_args.support_set={variant}', 'data.batch_size=4', 'max_steps=3',
                                        'epochs=2', 'checkpoint_every=1000000'], train_set=data)
    assert tr.step == 3
    r = tr.method.retrieval(tr.model, dict(data, meaning=torch.arange(8) % 4))
    assert set(r) == {'t2v', 'v2t', 't2v_meaning'} and 1 <= r['t2v']['MdR'] <= 8


def test_bad_settings():
    for bad, msg in (('method_args.support_set=all', 'support_set must be one of'),
                     ('method_args.pooling=attn', 'pooling must be one of'),
                     ('method_args.margin=-1', 'margin'), ('method_args.vocab=t5', "vocab must be 'hash' or 'toy'"),
                     ('method_args.in_dim=0', 'needs method_args.frozen_video')):
        check_fails(lambda: load_config(None, TINY + [bad]), contains=msg)


def test_clips_through_a_frozen_encoder():
    meth = SupportSet(load_config(None, TINY + ['method_args.in_dim=0', 'method_args.frozen_video=pooled_mlp',
                                                'method_args.frozen_args={grid: [1, 2, 2], out_dim: 6}',
                                                'data.fps=4']), 4)
    model = meth.build_model()
    video = torch.rand(2, 3, 12, 16, 16)                            # 3 seconds at 4 fps
    assert model.per_second(video, 4).shape == (2, 3, 6)
    assert not any(p.requires_grad for p in model.frozen.parameters())
    loss, _ = meth.loss(model.train(), dict(video=video, index=torch.tensor([0, 1])))   # dry run: random text ids
    assert torch.isfinite(loss) and not model.frozen.training


# ---------- full scale ----------
@pytest.mark.parametrize('name', ['support_set_howto100m', 'support_set_msrvtt'])
def test_configs_load(name):
    cfg = load_config(ROOT / 'configs' / f'{name}.yaml')
    a = SupportSet(cfg).args
    assert (a.margin, a.temperature, a.caption_weight, a.dim, a.ffn_dim, a.heads) == (0.2, 0.1, 10.0, 1024, 2048, 4)
    assert cfg.data.batch_size == 64 and cfg.optim.lr == 5e-5 and cfg.optim.clip_grad == 0.2


@pytest.mark.slow
def test_feature_files_dry_run_at_full_shapes():
    "(Slow.) 2 steps of 2 clips: 32 s x 2560-d features, 100-word captions, d = 1024, through the engine."
    tr = train_on_features(ROOT / 'configs' / 'support_set_msrvtt.yaml', overrides=['method_args.in_dim=2560'],
                           dry_run=True)
    assert tr.step == 2 and tr.model.frozen is None and tr.model.video_f.in_dim == 2560


def test_feature_manifest_errors(tmp_path):
    man = write_feature_manifest(tmp_path, [np.ones((3, 6))], ['a ball'])
    check_fails(lambda: FeatureManifest(tmp_path / 'nope.csv'), contains='does not exist')
    check_fails(lambda: FeatureManifest(man, 4, in_dim=5)[0], contains='must hold (seconds >= 1, 5) features')
    (tmp_path / 'bad.csv').write_text('path,caption\nvideo_0.npy,a ball\n')
    check_fails(lambda: FeatureManifest(tmp_path / 'bad.csv'), contains="lacks column(s) ['text']")


def test_claims_and_notebook_commands():
    names = [c.name for c in claims_of('support_set')]
    assert {'table1_cross_beats_identity', 'table1_cross_beats_none', 'table2b_attention_beats_mean'} <= set(names)
    import nbformat
    from fastcore.script import anno_parser
    from avlearn.papers.support_set import support_set_cli
    nb = nbformat.read(ROOT / 'nbs' / 'papers' / '25_support_set.ipynb', as_version=4)
    md = next(c.source for c in nb.cells if c.cell_type == 'markdown' and c.source.startswith('## At full scale'))
    lines = [l for b in md.split('```sh')[1:] for l in b.split('```')[0].replace('\\\n', ' ').splitlines()]
    parser = anno_parser(support_set_cli)
    n = 0
    for line in lines:
        if 'python -m avlearn.papers.support_set' not in line: continue
        args = parser.parse_args(shlex.split(line.split('avlearn.papers.support_set')[1]))
        load_config(ROOT / args.config, list(args.set or []))
        n += 1
    assert n == 2
