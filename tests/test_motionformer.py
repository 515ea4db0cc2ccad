"""Motionformer: full-scale configs load and build (on the meta device, nothing allocated), the method trains a tiny
model end to end through the shared trainer, and a dry run of the real config (slow)."""
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from avlearn.engine.config import load_config
from avlearn.engine.method import METHODS
import avlearn.papers.motionformer as mf
from avlearn.models import count_parameters

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('name,n_classes,approx', [('motionformer_k400', 400, None), ('motionformer_ssv2', 174, 'orthoformer')])
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


def test_method_trains_tiny_model():
    torch.manual_seed(0)
    cfg = load_config(None, ['method=motionformer', 'method_args={size: tiny, n_classes: 2, attention: trajectory, n_frames: 8}'])
    meth = METHODS['motionformer'](cfg); model = meth.build_model()
    x = torch.rand(4, 3, 8, 32, 32); y = torch.tensor([0, 1] * 2)
    x[y == 1, :, :, :16] = 1.0                                          # an easy cue
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    first = None
    for _ in range(10):
        loss, logs = meth.loss(model, dict(video=x, action=y)); opt.zero_grad(); loss.backward(); opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first


def test_bad_method_args():
    cfg = load_config(None, ['method=motionformer', 'method_args={size: base, atention: joint}'])
    with pytest.raises(ValueError, match='atention'):
        METHODS['motionformer'](cfg).build_model()


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
    assert approx['runs/mformer_k400'] is None and approx['runs/mformer_ssv2'] == approx['runs/mformer_k400_ortho'] == 'orthoformer'
