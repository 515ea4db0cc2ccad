"""Static and dynamic concepts: the issue's bad inputs as clear errors, eqs. 8-9 against brute force, the shared trunk
trained by all three inputs, the queue through a checkpoint, the UCF-101 and Kinetics-400 configs at their real shapes
(on the meta device) and as dry runs, and the notebook's full-scale commands."""
import copy, random
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from fastcore.test import test_fail as check_fails
from avlearn.engine.config import load_config
from avlearn.engine.method import METHODS, RunContext, claims_of
from avlearn.papers.concepts import (Concepts, ConceptModel, FeatureQueue, concept_codes, concept_inputs,
                                     frame_difference, local_contrast, soft_codes, static_frame, valid_concepts,
                                     n_valid)

ROOT = Path(__file__).resolve().parents[1]
TINY = ['method=concepts', 'model.video_args={width: 4}',
        'method_args={n_static: 4, n_dynamic: 4, valid_ratio: 0.5, queue_length: 8, local_start_epoch: 0}']


def _method(*extra):
    return Concepts(load_config(None, TINY + list(extra)), 8)


def _batch(B=4, T=8, size=32):
    g = torch.Generator().manual_seed(0)
    return dict(video=torch.rand(B, 3, T, size, size, generator=g))


# ---------- the bad inputs ----------
def test_clip_of_one_frame():
    meth = _method()
    check_fails(lambda: meth.loss(meth.build_model(), _batch(T=1)), contains='at least 2 frames')
    check_fails(lambda: frame_difference(torch.rand(2, 3, 1, 8, 8)), contains='a clip of one frame has no motion')
    check_fails(lambda: concept_inputs(torch.rand(2, 3, 1, 8, 8)), contains='at least 2 frames')


def test_more_valid_concepts_than_prototypes():
    check_fails(lambda: load_config(None, TINY[:2] + ['method_args={valid_ratio: 1.5}']),
                contains='more valid concepts than prototypes')
    check_fails(lambda: valid_concepts(torch.randn(3, 5), torch.randn(3, 5), 6), contains='top-6 of 5 concepts')
    check_fails(lambda: valid_concepts(torch.randn(3, 5), torch.randn(3, 5), 0), contains='k must be an int in [1, 5]')
    assert n_valid(1.0, 5) == 5 and n_valid(0.01, 5) == 1


def test_empty_batches_for_the_queue():
    check_fails(lambda: FeatureQueue(16, 8).push(torch.zeros(0, 8)), contains='got an empty batch')
    check_fails(lambda: soft_codes(torch.zeros(0, 5), torch.randn(4, 5)), contains='an empty batch has no soft codes')
    meth = _method()
    check_fails(lambda: meth.loss(meth.build_model(), dict(video=torch.rand(0, 3, 8, 32, 32))), contains='at least 2 clips')


def test_other_bad_settings():
    for bad, msg in (('method_args.n_static=0', 'n_static must be >= 1'), ('method_args.transform=conv', 'transform must'),
                     ('method_args.temperature=0', 'temperature'), ('method_args.crop_scale=[0.5, 0.2]', 'crop_scale'),
                     ('method_args.concepts=3', 'unknown key(s)')):
        check_fails(lambda: load_config(None, TINY + [bad]), contains=msg)
    check_fails(lambda: static_frame(torch.rand(2, 3, 4, 8, 8), torch.tensor([0, 4])), contains='[0, 4)')


# ---------- eqs. 8-9 ----------
def test_valid_concepts_and_margin_loss_match_brute_force():
    rng = random.Random(0)
    for trial in range(20):
        B, K, C, k = rng.randint(2, 6), rng.randint(1, 9), rng.randint(1, 5), None
        k = rng.randint(1, K)
        g = torch.Generator().manual_seed(trial)
        za, zb, ua, ub = (torch.randn(*s, generator=g) for s in ((B, K), (B, K), (B, K, C), (B, K, C)))
        V = valid_concepts(za, zb, k)
        for b in range(B):
            want = set(za[b].topk(k).indices.tolist()) & set(zb[b].topk(k).indices.tolist())
            assert set(V[b].nonzero().flatten().tolist()) == want
        na, nb = F.normalize(ua, dim=-1), F.normalize(ub, dim=-1)
        terms = [(na[i, c] - nb[i, c]).pow(2).sum()
                 + sum((1.4 - (na[i, c] - nb[j, c]).norm()).clamp_min(0) ** 2 for j in range(B) if j != i) / (B - 1)
                 for i, c in V.nonzero().tolist()]
        want = torch.stack(terms).mean() if terms else torch.tensor(0.)
        torch.testing.assert_close(local_contrast(ua, ub, V), want, atol=1e-5, rtol=1e-5)


# ---------- the method ----------
def _ctx(model, epoch):
    return RunContext(epoch, 0, 0, 1, torch.device('cpu'), model, None, 4, 0, 0, None, None, print, print, None)


def test_every_input_trains_the_shared_trunk():
    "The clip, the static frame and the frame difference each reach the one trunk (three separate backward passes)."
    meth = _method('method_args.lambda_local=0', 'method_args.lambda_rec=0', 'method_args.lambda_sparse=0')
    torch.manual_seed(0)
    model = meth.build_model()
    v, s, d = concept_inputs(_batch()['video'], augment=False)
    for which, x in (('v', v), ('s', s), ('d', d)):
        model.zero_grad()
        model.encode(x, which)['z'].pow(2).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.video_encoder.parameters()), which


def test_local_term_follows_the_epoch_schedule_and_queue_survives_a_checkpoint():
    meth = _method('method_args.local_start_epoch=2')
    torch.manual_seed(0)
    model = meth.build_model()
    for epoch, has_local in ((0, False), (1, False), (2, True)):
        meth.on_epoch_start(_ctx(model, epoch))
        loss, logs = meth.loss(model, _batch())
        assert ('L_local' in logs) == has_local and torch.isfinite(loss)
    assert len(meth.queues['v']) == 8
    other = _method('method_args.local_start_epoch=2')
    other.load_state_dict(copy.deepcopy(meth.state_dict()))
    assert other.epoch == 2 and torch.equal(other.queues['d'].get(), meth.queues['d'].get())


def test_claims_registered():
    assert {c.name for c in claims_of('concepts')} == {
        'table3_static_codes_carry_scene', 'table3_dynamic_codes_carry_action', 'table3_one_scene_dynamic_wins',
        'table4_regularisers_help', 'table4_local_helps', 'figure5_dynamic_attends_to_motion'}


# ---------- full scale ----------
@pytest.mark.parametrize('name', ['concepts_ucf101', 'concepts_k400'])
def test_configs_at_real_shapes(name):
    cfg = load_config(ROOT / 'configs' / f'{name}.yaml')
    meth = METHODS['concepts'](cfg, 8)
    assert (meth.args.n_static, meth.args.n_dynamic, meth.k_static, meth.k_dynamic) == (50, 50, 5, 5)
    assert round(cfg.data.clip_duration * cfg.data.fps) == 16 and meth.args.view_size == 112
    model = meth.build_model()
    assert isinstance(model, ConceptModel) and type(model.video_encoder).__name__ == 'R2Plus1D18'
    trunk = copy.deepcopy(model.video_encoder).to('meta')           # the trunk's shapes on meta, the heads on the CPU
    for T in (16, 15):                                              # clip and static frame, frame difference
        assert tuple(trunk.feature_map(torch.zeros(2, 3, T, 112, 112, device='meta')).shape) == (2, 512, 2, 7, 7)
    f, fmap = torch.randn(2, 512), torch.randn(2, 512, 2, 7, 7)
    assert tuple(concept_codes(f, model.prototypes['v']).shape) == (2, 100)
    assert tuple(model.attention(model.prototypes['s'], fmap).shape) == (2, 50, 512)
    assert tuple(model.reconstruct['d'](torch.randn(2, 50)).shape) == (2, 512)


@pytest.mark.slow                        # R(2+1)D-18 on three 16 x 112 x 112 inputs: minutes on a loaded CPU
@pytest.mark.parametrize('name', ['concepts_ucf101', 'concepts_k400'])
def test_dry_run_configs(name):
    from avlearn.engine.trainer import train
    trainer = train(str(ROOT / 'configs' / f'{name}.yaml'), dry_run=True, progress=False)
    assert trainer.step == 2


def test_full_scale_commands_in_notebook_are_valid():
    "Every avlearn-train command of the notebook's 'At full scale' block parses with the real CLI and its config builds."
    import shlex
    import nbformat
    from fastcore.script import anno_parser
    from avlearn.engine.cli import train_cli
    nb = nbformat.read(ROOT / 'nbs' / 'papers' / '30_concepts.ipynb', as_version=4)
    md = next(c.source for c in nb.cells if c.cell_type == 'markdown' and c.source.startswith('## At full scale'))
    block = md.split('```sh')[1].split('```')[0].replace('\\\n', ' ')
    parser = anno_parser(train_cli.__wrapped__)
    outs = {}
    for line in filter(None, (l.split('#')[0].strip() for l in block.splitlines())):
        args = shlex.split(line.replace('$(which avlearn-train)', 'avlearn-train'))
        if args[0] == 'torchrun': args = args[args.index('avlearn-train'):]
        assert args[0] == 'avlearn-train', line
        ns = parser.parse_args(args[1:])
        outs[ns.out] = Concepts(load_config(ROOT / ns.config, ns.set or ()), 8)
    assert outs['runs/concepts_ucf101_align'].args.lambda_local == 0 and len(outs) >= 3
