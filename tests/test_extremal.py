"""Extremal perturbations: the issue's bad inputs as clear errors, `requires_grad` restored, Lemma 1 on random 3-d
masks, the renormalised blur against the zero-padded one, the toy world's object masks, the config, and the
`avlearn-explain` command end to end on a classifier and on an audio-visual checkpoint."""
import configparser, json, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch
from fastcore.test import test_fail as check_fails
from avlearn.data import ToyWorld, ToyWorldConfig, COLOURS
from avlearn.engine.method import train_in_process
from avlearn.models import build_encoder
from avlearn.papers.extremal import (SmoothMask, KERNEL_LIPSCHITZ, extremal_perturbation, gaussian_blur, check_areas,
                                     channel_attribution, explain_av, frozen, load_trained)

ROOT = Path(__file__).resolve().parents[1]


def _classifier():
    torch.manual_seed(0)
    return build_encoder('tiny_r2plus1d', width=4, out_dim=3)


# ---------- the bad inputs ----------
def test_areas_outside_0_1():
    m, x = _classifier(), torch.rand(3, 4, 32, 32)
    for bad in ((0.0,), (1.0,), (0.1, -0.2), (1.5,), (float('nan'),), ()):
        check_fails(lambda: extremal_perturbation(m, x, 0, areas=bad, iterations=2),
                    contains='areas must be fractions strictly inside (0, 1)')


def test_target_out_of_range():
    m, x = _classifier(), torch.rand(3, 4, 32, 32)
    for bad in (3, -1, 1.5, True):
        check_fails(lambda: extremal_perturbation(m, x, bad, iterations=2),
                    contains='target must be a class index in [0, 3)')


def test_model_without_scores():
    x = torch.rand(3, 4, 32, 32)
    enc = build_encoder('tiny_r2plus1d', width=4, out_dim=None)
    check_fails(lambda: extremal_perturbation(lambda v: enc.feature_map(v), x, 0, iterations=2),
                contains='model must return class scores (B, K)')
    check_fails(lambda: extremal_perturbation(lambda v: (v, v), x, 0, iterations=2), contains='got tuple')
    check_fails(lambda: extremal_perturbation(lambda v: v.mean(), x, 0, iterations=2), contains='class scores')


def test_input_smaller_than_the_kernel():
    m = _classifier()
    check_fails(lambda: extremal_perturbation(m, torch.rand(3, 4, 6, 6), 0, step=8, iterations=2),
                contains='smaller than the mask kernel')
    check_fails(lambda: SmoothMask((2, 40), step=(4, 4)), contains='an axis of 2 pixels with a lattice step of 4')


def test_requires_grad_and_mode_restored_even_after_an_error():
    m = _classifier().train()
    m.stem[0].weight.requires_grad_(False)
    before = [p.requires_grad for p in m.parameters()]
    extremal_perturbation(m, torch.rand(3, 4, 32, 32), 1, areas=(0.1, 0.2), iterations=3)
    assert [p.requires_grad for p in m.parameters()] == before and m.training
    with pytest.raises(ValueError):
        with frozen(m): raise ValueError('inside')
    assert [p.requires_grad for p in m.parameters()] == before and m.training
    channel_attribution(m.feature_map, lambda a: m.fc(a.mean((2, 3, 4))), torch.rand(3, 4, 32, 32), 0, (0.25,),
                        model=m, iterations=3)
    assert [p.requires_grad for p in m.parameters()] == before and m.training


# ---------- the method's pieces ----------
@pytest.mark.parametrize('seed', range(4))
def test_lemma1_on_random_3d_masks(seed):
    g = torch.Generator().manual_seed(seed)
    sigma = 0.8 + seed * 0.4
    gen = SmoothMask((5, 9, 11), step=1, sigma=sigma, hard=True)
    mbar = torch.rand(2, 5, 9, 11, generator=g) ** 3
    mbar[0, 2, 3, 4] = 1.
    m = gen(mbar)
    assert (m >= mbar - 1e-6).all() and (m <= 1 + 1e-6).all() and m[0, 2, 3, 4] == 1
    K = KERNEL_LIPSCHITZ / sigma
    for d in (1, 2, 3):
        assert m.diff(dim=d).abs().max() <= K + 1e-6


def test_blur_renormalised_keeps_borders():
    x = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    ours, zero = gaussian_blur(x, 8.0), gaussian_blur(x, 8.0, renormalise=False)
    corner = lambda y: y[..., :4, :4].mean().item()
    assert abs(corner(ours) - x[..., :12, :12].mean().item()) < 0.1     # a local average, not a darkened one
    assert corner(zero) < 0.6 * corner(ours)


def test_area_is_met_on_the_image():
    torch.manual_seed(0)
    net = torch.nn.Sequential(_classifier(), torch.nn.LogSoftmax(1))
    r = extremal_perturbation(net, torch.rand(3, 4, 32, 32), 0, areas=(0.1, 0.3), mask_shape=(1, 32, 32),
                              iterations=150, lambda0=3., growth=100., schedule='geometric')
    assert (r['area_error'] < 0.05).all(), r['area_error']
    assert r['masks'].shape == (2, 1, 32, 32)


def test_toy_world_object_masks():
    w = ToyWorld(ToyWorldConfig(n_frames=4, size=32, actions=('static',), n_distractors=2, scenes=('city',)), n=6,
                 seed=3)
    for i in range(6):
        r = w.render(i)
        assert r['object_mask'].shape == (4, 32, 32) and r['distractor_masks'].shape == (2, 4, 32, 32)
        core = r['object_mask'] >= 1
        assert core.any()
        colour = np.asarray(COLOURS[r['factors']['colour']], np.float32)
        assert np.abs(r['video'][core] - colour).max() < 1e-4               # the object's pixels have its colour
    drift = ToyWorld(ToyWorldConfig(n_frames=4, size=32, camera_drift=0.5), n=2, seed=0).render(1)
    core = drift['object_mask'] >= 1                                        # the mask drifts with the frames
    colour = np.asarray(COLOURS[drift['factors']['colour']], np.float32)
    assert core.any() and np.abs(drift['video'][core] - colour).max() < 1e-4


# ---------- the config and the command ----------
def test_config_dry_run(tmp_path):
    from avlearn.engine.trainer import train
    cfg = str(ROOT / 'configs' / 'extremal_pointing.yaml')
    with pytest.raises(ValueError, match="the batch has no 'colour' labels"):     # synthetic clips carry 'action' only
        train(cfg, str(tmp_path / 'a'), dry_run=True, progress=False)
    trainer = train(cfg, str(tmp_path / 'b'), ['method_args={task: action, n_classes: 10}'], dry_run=True,
                    progress=False)
    assert trainer.step == 2


def test_console_script_declared():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    scripts = dict(s.split('=') for s in cfg['DEFAULT']['console_scripts'].split())
    assert scripts['avlearn-explain'] == 'avlearn.papers.extremal:explain_cli'


def _clip(path):
    from avlearn.media import write_av_file
    w = ToyWorld(ToyWorldConfig(n_frames=8, size=32, fps=8.0, actions=('bounce',), n_distractors=1), n=1, seed=0)
    r = w.render(0)
    write_av_file(path, (r['video'] * 255).round().astype(np.uint8), r['audio'], fps=8.0)
    return path


def _explain(tmp_path, *args):
    "Run the `avlearn-explain` entry point (a script that calls it, as the console script does) with `args`."
    script = tmp_path / 'avlearn_explain.py'
    script.write_text('from avlearn.papers.extremal import explain_cli\nexplain_cli()\n')
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.mark.parametrize('kind', ['classifier', 'audio-visual'])
def test_explain_command_end_to_end(tmp_path, kind):
    video = _clip(tmp_path / 'clip.mp4')
    over = ['max_steps=2', 'epochs=1', 'data.batch_size=4', 'model.video_args={width: 4}', 'eval_tasks=[]',
            'data.fps=8.0', 'data.world={n_frames: 8, size: 32, fps: 8.0}']
    w = ToyWorld(ToyWorldConfig(n_frames=8, size=32, fps=8.0), n=8, seed=0).batch(range(8))
    if kind == 'classifier':
        over += ['method=extremal', 'method_args={task: colour, n_classes: 5}']
    else:
        over += ['method=crossmodal_nce', 'model.audio_args={width: 4}', 'model.proj_dim=8']
    train_in_process(None, over, train_set=dict(video=w['video'], audio=w['audio'], colour=w['colour']),
                     out=str(tmp_path / 'run'))
    cfg, method, model = load_trained(tmp_path / 'run')
    res = _explain(tmp_path, tmp_path / 'run', video, '--out', tmp_path / 'ex', '--areas', '0.1', '0.2',
                   '--iterations', '4')
    assert res.returncode == 0, res.stderr
    for f in ('grid.png', 'mask.mp4', 'explanation.json'): assert (tmp_path / 'ex' / f).stat().st_size > 0
    from avlearn.media import read_clip
    back = read_clip(tmp_path / 'ex' / 'mask.mp4')
    assert back['video'].shape[-1] == 128 and back['audio'].numel() > 0          # 4x larger, with the sound
    summary = json.loads((tmp_path / 'ex' / 'explanation.json').read_text())
    assert ('audio' in summary) == (kind == 'audio-visual') and len(summary['video']['preserved']) == 2


def test_explain_command_errors(tmp_path):
    video = _clip(tmp_path / 'clip.mp4')
    res = _explain(tmp_path, tmp_path / 'nothing', video)
    assert res.returncode == 2 and 'avlearn-explain: error:' in res.stderr and 'does not exist' in res.stderr
    (tmp_path / 'empty').mkdir()
    res = _explain(tmp_path, tmp_path / 'empty', video)
    assert res.returncode == 2 and 'holds no ckpt_*.pt' in res.stderr
    check_fails(lambda: check_areas([0.1, 2.0]), contains='strictly inside (0, 1)')
