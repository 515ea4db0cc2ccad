"""The engine's door and compatibility: typed method settings, the run context, parameter groups, checkpoints written
before the layout moved (commit e422490), training in-process without touching global plotting state, and claims."""
import json, shutil
from dataclasses import dataclass
from pathlib import Path
import pytest
import torch
from avlearn.engine.config import load_config
from avlearn.engine.method import (Method, MethodArgs, RunContext, register_method, get_method, available_methods,
                                   build_av_model, Claim, CLAIMS, register_claim, claims_of, paper_modules, results_dir)
from avlearn.engine.trainer import train, Trainer, read_metrics
from avlearn.engine.data import TensorDictDataset

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / 'tests' / 'fixtures' / 'e422490'
TINY = ['data.n_train=16', 'data.n_test=8', 'data.batch_size=8', 'data.world={n_frames: 4, size: 16}',
        'model.video_args={width: 4, out_dim: 8}', 'model.audio_args={width: 4, out_dim: 8}', 'model.proj_dim=8',
        'eval_tasks=[action]']


@pytest.mark.parametrize('method', ['crossmodal_nce', 'avid_cma', 'gdt', 'selavi', 'motionformer'])
def test_method_args_one_clear_error_per_kind(method):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['no_such_key'\]"):
        load_config(overrides=[f'method={method}', 'method_args={no_such_key: 1}'])
    key = {'motionformer': 'n_classes', 'selavi': 'K'}.get(method, 'temperature')
    with pytest.raises(ValueError, match=f'method_args.{key} for {method} must be'):          # wrong type
        load_config(overrides=[f'method={method}', f'method_args={{{key}: abc}}'])
    with pytest.raises(ValueError, match=f'method_args.{key}'):                               # bad value
        load_config(overrides=[f'method={method}', f'method_args={{{key}: 0}}'])


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(ValueError) as e: get_method('simclr')
    for m in ('crossmodal_nce', 'avid_cma', 'gdt', 'selavi', 'motionformer'): assert m in str(e.value)


@dataclass(frozen=True)
class _ProbeArgs(MethodArgs):
    head_lr_scale: float = 0.5


@register_method('_engine_probe')
class _Probe(Method):
    "A test method that records what its hooks see and gives its projection heads their own learning rate."
    Args = _ProbeArgs
    seen = []
    def build_model(self): return build_av_model(self.cfg)
    def loss(self, model, batch):
        v, a = model(batch['video'], batch['audio'])
        return ((v - a) ** 2).mean(), {}
    def on_epoch_start(self, ctx):
        assert isinstance(ctx, RunContext) and not hasattr(ctx, 'optimizer')
        _Probe.seen.append((ctx.epoch, ctx.step, ctx.rank, ctx.world_size, type(ctx.model).__name__,
                            len(ctx.train_set)))
        with ctx.autocast(): ctx.model(ctx.to_device(dict(video=torch.rand(2, 3, 4, 16, 16)))['video'])
        ctx.log_record(dict(probe_epoch=ctx.epoch))
    def param_groups(self, model):
        heads = [p for n, p in model.named_parameters() if '_head' in n]
        rest = [p for n, p in model.named_parameters() if '_head' not in n]
        return [dict(params=rest), dict(params=heads, lr_scale=self.args.head_lr_scale)]


def test_run_context_and_param_groups(tmp_path):
    _Probe.seen.clear()
    tr = train(None, tmp_path, ['method=_engine_probe', *TINY, 'epochs=2', 'optim.lr=0.01', 'optim.schedule=constant'],
               progress=False)
    assert _Probe.seen == [(0, 0, 0, 1, 'AVModel', 16), (1, 2, 0, 1, 'AVModel', 16)]
    assert [g['lr'] for g in tr.optimizer.param_groups] == [0.01, 0.005]
    assert [r['probe_epoch'] for r in read_metrics(tmp_path) if 'probe_epoch' in r] == [0, 1]


def test_train_in_process_keeps_global_plotting_state(tmp_path):
    import matplotlib, matplotlib.pyplot as plt
    backend, n_figs = matplotlib.get_backend(), len(plt.get_fignums())
    clips = torch.rand(16, 3, 4, 16, 16); audio = torch.randn(16, 16000) * 0.1
    ds = TensorDictDataset(dict(video=clips, audio=audio, action=torch.arange(16) % 3))
    tr = train(load_config(None, TINY), tmp_path, train_set=ds, progress=False)
    assert tr.step == 2 and (tmp_path / 'loss.png').exists()
    assert matplotlib.get_backend() == backend and len(plt.get_fignums()) == n_figs


@pytest.mark.parametrize('method', ['crossmodal_nce', 'avid_cma'])
def test_checkpoints_from_before_the_move_load_and_resume(tmp_path, method):
    "Checkpoints written by e422490's avlearn.training load into the new engine, evaluate, and training resumes."
    from avlearn.engine.checkpoints import load_checkpoint
    from avlearn.engine.config import TrainConfig, config_from_dict
    from avlearn.engine.data import build_datasets
    from avlearn.engine.evaluation import run_features
    shutil.copy(FIX / f'{method}.pt', tmp_path / 'ckpt_000000002.pt')
    state = load_checkpoint(tmp_path / 'ckpt_000000002.pt')
    assert state['config']['method'] == method and state['step'] == 2
    cfg = config_from_dict(TrainConfig, state['config'])
    train_set, _ = build_datasets(cfg)
    m = get_method(cfg.method)(cfg, len(train_set)); model = m.build_model()
    model.load_state_dict(state['model']); m.load_state_dict(state.get('method', {}))      # strict: every key fits
    feats, labels = run_features(m, model, train_set)
    assert feats.shape == (16, 8) and torch.isfinite(feats).all() and labels['action'].shape == (16,)
    cfg_overrides = [f'method={method}', *TINY, 'max_steps=4', 'epochs=3']
    if method == 'avid_cma': cfg_overrides.append('method_args={cma_k: 2, n_negatives: 8}')
    tr = Trainer(load_config(None, cfg_overrides), tmp_path, progress=False)
    assert tr.status == 'resumed' and tr.step == 2
    tr.fit()
    assert tr.step == 4


def test_a_mismatched_old_checkpoint_says_why(tmp_path):
    shutil.copy(FIX / 'avid_cma.pt', tmp_path / 'ckpt_000000002.pt')
    over = ['method=avid_cma', *TINY, 'data.n_train=24', 'method_args={cma_k: 2, n_negatives: 8}']
    with pytest.raises(RuntimeError, match=r'started with another config[\s\S]*data.n_train: 16 -> 24'):
        Trainer(load_config(None, over), tmp_path, progress=False)
    with pytest.raises(ValueError, match='memory bank has 16 rows but the training set has 24 clips'):
        Trainer(load_config(None, over), tmp_path, progress=False, force_resume=True)


# ---------- claims ----------
def test_every_paper_registers_claims():
    for paper in paper_modules():
        claims = claims_of(paper)
        assert claims, f"paper {paper} registers no claim (avlearn.engine.method.register_claim)"
        for c in claims: assert c.paper == paper and c.what and c.unit


def test_committed_results_match_the_current_claims():
    "results/<paper>.json were made with the claim definitions registered now (same config hash)."
    folder = results_dir()
    for f in sorted(folder.glob('*.json')):
        res = json.loads(f.read_text())
        current = {c.name: c.config_hash for c in claims_of(res['paper'])}
        for name, r in res['claims'].items():
            assert name in current, f"{f.name}: claim {name} is no longer registered"
            assert r['config_hash'] == current[name], f"{f.name}: {name} was made with another definition: rerun " \
                                                      f"avlearn-reproduce {res['paper']}"
        assert set(current) <= set(res['claims']), f"{f.name} lacks {set(current) - set(res['claims'])}"


def test_reproduce_writes_results_and_report(tmp_path, monkeypatch):
    from avlearn.engine import cli
    calls = []
    def run(seed, budget):
        calls.append((seed, budget)); return dict(value=1.0 + 0.1 * seed)
    monkeypatch.setattr(cli, 'paper_modules', lambda: ['demo_paper'])
    monkeypatch.setattr(cli, 'claims_of', lambda p: [Claim('demo_paper', 'c1', 'it works', 2.0, 'points', run)])
    res = cli.reproduce(None, seeds=3, budget='fast', out=tmp_path, progress=False)
    assert calls == [(0, 'fast'), (1, 'fast'), (2, 'fast')]
    saved = json.loads((tmp_path / 'demo_paper.json').read_text())
    assert saved['claims']['c1']['values'] == [1.0, 1.1, 1.2] and saved['claims']['c1']['verdict'] == 'holds'
    assert '| demo_paper | `c1` |' in (tmp_path / 'REPORT.md').read_text()
