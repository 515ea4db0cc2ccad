"""Motionformer: full-scale configs load and build (on the meta device, nothing allocated), the method trains a tiny
model end to end through the engine, the claims are registered and their experiment pieces work (overrides, a run
folder read back, the command-line path failing clearly), and a dry run of the real config (slow)."""
import contextlib, io
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from avlearn.engine.config import load_config
from avlearn.engine.method import METHODS, claims_of
import avlearn.papers.motionformer as mf
from avlearn.models import count_parameters

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def single_thread():
    "Tiny models train as fast on one thread, and far faster on a busy machine; the setting is restored afterwards."
    from avlearn.core import one_thread
    with one_thread(): yield


@pytest.mark.parametrize('name,n_classes,approx', [('motionformer_k400', 400, None),
                                                   ('motionformer_ssv2', 174, 'orthoformer')])
def test_full_scale_configs_build(name, n_classes, approx):
    cfg = load_config(ROOT / 'configs' / f'{name}.yaml')
    assert cfg.method == 'motionformer' and 'motionformer' in METHODS
    assert cfg.optim.name == 'adamw' and cfg.precision == 'bf16' and cfg.method_args['label_smoothing'] == 0.2
    assert round(cfg.data.clip_duration * cfg.data.fps) == 16 and cfg.data.size == 224
    with torch.device('meta'):
        model = METHODS['motionformer'](cfg).build_model()
    assert (model.T, model.S, model.dim, len(model.blocks)) == (8, 196, 768, 12)
    assert model.head.out_features == n_classes and model.blocks[0].attn.approx == approx
    assert 105e6 < count_parameters(model) < 112e6


def _train_quietly(overrides, **kw):
    from avlearn.engine.trainer import train
    with contextlib.redirect_stdout(io.StringIO()):
        return train(load_config(None, overrides), progress=False, **kw)


def test_method_trains_tiny_model_through_the_engine():
    "The engine trains MotionformerMethod on an in-memory dataset with an easy cue: the loss falls."
    from avlearn.engine.data import TensorDictDataset
    from avlearn.engine.trainer import read_metrics
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 8, 32, 32, generator=g); y = torch.tensor([0, 1] * 4)
    x[y == 1, :, :, :16] = 1.0                                          # an easy cue
    tr = _train_quietly(['method=motionformer', 'method_args={size: tiny, n_classes: 2, attention: trajectory, '
                         'n_frames: 8, img_size: 32}', 'data.batch_size=4', 'epochs=10', 'optim.name=adamw',
                         'optim.lr=0.003', 'optim.schedule=constant'],
                        train_set=TensorDictDataset(dict(video=x, action=y)))
    losses = [r['loss'] for r in read_metrics(tr.out) if 'loss' in r]
    assert len(losses) == 20 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4


def test_bad_method_args():
    "A misspelt key or a bad value fails when the config is read (or, for a TrainConfig built by hand, by the method)."
    from avlearn.engine.config import TrainConfig
    with pytest.raises(ValueError, match='atention'):
        load_config(None, ['method=motionformer', 'method_args={size: base, atention: joint}'])
    with pytest.raises(ValueError, match='atention'):
        METHODS['motionformer'](TrainConfig(method='motionformer', method_args=dict(atention='joint'))).build_model()
    with pytest.raises(ValueError, match='method_args.selection'):
        load_config(None, ['method=motionformer', 'method_args={selection: greedy}'])


def test_claims_are_registered_with_their_settings():
    claims = {c.name: c for c in claims_of('motionformer')}
    assert set(claims) == {'table4_trajectory_vs_others', 'table3b_orthogonal_selection', 'table3c_more_prototypes'}
    assert abs(claims['table4_trajectory_vs_others'].paper_value - 2.3) < 1e-9       # SSv2: 66.5 - max(64.0, 64.2)
    for c in claims.values():
        assert c.config['table4']['world']['camera_drift'] > 0 and c.config['table3']['table3b_prototypes'] == 16


def test_table4_overrides_build_the_experiment():
    cfg = load_config(None, mf.table4_overrides('trajectory', 2, 'full'))
    assert (cfg.method, cfg.seed, cfg.epochs, cfg.data.n_train, cfg.data.kind) == ('motionformer', 2, 16, 1024, 'toy')
    with torch.device('meta'):
        model = METHODS['motionformer'](cfg).build_model()
    assert (model.T, model.S, model.head.out_features, model.blocks[0].attn.mode) == (4, 16, 4, 'trajectory')
    with pytest.raises(ValueError, match='budget'): mf.table4_overrides('joint', 0, 'huge')


def test_a_run_folder_reads_back_as_the_trained_model(tmp_path):
    "load_trained rebuilds the model of an engine run from its checkpoint: same predictions as the trainer's model."
    ov = mf.table4_overrides('divided', 0, 'fast') + ['data.n_train=32', 'epochs=1']
    tr = _train_quietly(ov, out=tmp_path)
    back, video = mf.load_trained(tmp_path), torch.rand(3, 3, 8, 32, 32)
    tr.model.eval()
    with torch.no_grad(): torch.testing.assert_close(back(video), tr.model(video))
    curves = mf.epoch_curves(tmp_path, tr.steps_per_epoch)
    assert len(curves['loss']) == 1 and 0 <= curves['train_acc'][0] <= 100
    with pytest.raises(FileNotFoundError, match='no checkpoint'): mf.load_trained(tmp_path / 'empty')


def test_the_command_line_path_fails_clearly(tmp_path):
    "train_with_cli runs the real avlearn-train; a bad setting comes back as an error quoting the command's output."
    ov = mf.table4_overrides('joint', 0, 'fast') + ['method_args.attention=axial']
    with pytest.raises(RuntimeError, match='avlearn-train failed'):
        mf.train_with_cli(ov, tmp_path)


def test_approximation_error_and_displacement():
    torch.manual_seed(0)
    one_patch = mf.motionformer('tiny', 4, n_frames=8, img_size=8, patch=(2, 8, 8))   # one patch: exact
    assert mf.approximation_error(one_patch, torch.rand(2, 3, 8, 8, 8), 1, 'random', draws=2) < 1e-5
    m = mf.motionformer('tiny', 4, n_frames=8, img_size=32)
    errs = mf.error_table(m, torch.rand(4, 3, 8, 32, 32), prototypes=(2, 16), draws=1)
    assert set(errs) == {'orthogonal', 'random', 'segment_means'} and all(v > 0 for r in errs.values() for v in r.values())
    from avlearn.data import ToyWorld, ToyWorldConfig
    world = dict(mf.TABLE4['world'], actions=['grow'])
    still = ToyWorld(ToyWorldConfig(**dict(world, camera_drift=0.0)), n=3, seed=1)
    moving = ToyWorld(ToyWorldConfig(**world), n=3, seed=1)
    assert max(mf.object_displacement(still, i) for i in range(3)) < 0.15
    assert min(mf.object_displacement(moving, i) for i in range(3)) > 0.5     # the shorter way round on a torus


def test_cuda_cell_says_it_was_skipped_on_cpu(monkeypatch, capsys):
    "The notebook's `#| cuda` cell keeps its flag but, run on a machine without CUDA, prints that it was skipped."
    import nbformat
    nb = nbformat.read(ROOT / 'nbs' / 'papers' / '23_motionformer.ipynb', as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == 'code' and c.source.startswith('#| cuda')]
    assert len(cells) == 1
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    exec(cells[0], dict(torch=torch, F=F, motionformer=mf.motionformer))
    assert 'skipped' in capsys.readouterr().out


@pytest.mark.slow
def test_dry_run_full_config(tmp_path):
    from avlearn.engine.trainer import train
    trainer = train(str(ROOT / 'configs' / 'motionformer_k400.yaml'), str(tmp_path), dry_run=True, progress=False)
    assert trainer.step == 2


def test_full_scale_commands_in_notebook_are_valid():
    "Every command of the notebook's 'At full scale' block parses with the real CLI, and its config + overrides build."
    import shlex
    import nbformat
    from fastcore.script import anno_parser
    from avlearn.engine.cli import train_cli
    nb = nbformat.read(ROOT / 'nbs' / 'papers' / '23_motionformer.ipynb', as_version=4)
    md = next(c.source for c in nb.cells if c.cell_type == 'markdown' and c.source.startswith('## At full scale'))
    block = md.split('```sh')[1].split('```')[0].replace('\\\n', ' ')
    parser = anno_parser(train_cli.__wrapped__)
    approx = {}
    for line in filter(None, (l.split('#')[0].strip() for l in block.splitlines())):
        args = shlex.split(line.replace('$(which avlearn-train)', 'avlearn-train'))
        if args[0] == 'torchrun':   # torchrun runs the installed script (the module has no __main__)
            assert args[1].startswith('--nproc_per_node') and args[2] == 'avlearn-train' and '-m' not in args, line
            args = args[2:]
        assert args[0] == 'avlearn-train', line
        ns = parser.parse_args(args[1:])                        # exits (SystemExit) on an unknown flag such as --dry-run
        cfg = load_config(ROOT / ns.config, ns.set or ())
        with torch.device('meta'):
            model = METHODS['motionformer'](cfg).build_model()
        approx[ns.out] = model.blocks[0].attn.approx
    assert approx['runs/mformer_k400'] is None
    assert approx['runs/mformer_ssv2'] == approx['runs/mformer_k400_ortho'] == 'orthoformer'
