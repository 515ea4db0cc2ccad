"""Temporal cognizance beyond the notebook: the snippet bank filled on two processes equals the one-process fill, the
method trains under torchrun with 2 gloo processes from an AVID-CMA checkpoint (alternating its losses by epoch), a
resumed run keeps its phase, the full-scale config dry-runs (at real shapes: slow), and the bad inputs of issue 17."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from avlearn.dist import free_port
from test_compositional import _context     # the AVID-CMA family's RunContext for hook tests

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0', MPLBACKEND='Agg')
TINY = ['data.kind=synthetic', 'data.n_train=8', 'data.n_test=4', 'data.n_frames=8', 'data.size=32',
        'data.sample_rate=8000', 'data.clip_duration=1.0', 'data.batch_size=2', 'model.proj_dim=8',
        'model.video_args={width: 4, out_dim: 8}', 'model.audio_args={width: 4, out_dim: 8}', 'eval_tasks=[]']
COG = 'n_snippets: 4, cma_k: 2, n_negatives: 8, joint_dim: 16, heads: 8'


def _cfg(*extra):
    from avlearn.engine.config import load_config
    return load_config(None, [*TINY, *extra])


def _fill(rank, world, out):
    "Fill a cognizance snippet bank on `world` processes and save rank 0's bank to `out`."
    from avlearn.engine.data import build_datasets
    from avlearn.papers.cognizance import Cognizance
    cfg = _cfg('method=cognizance', f'method_args={{{COG}, bank_init: encode}}')
    train_set, _ = build_datasets(cfg)
    torch.manual_seed(0)
    m = Cognizance(cfg, len(train_set)); model = m.build_model()
    m.on_epoch_start(_context(rank, world, model, train_set))
    assert m.bank_filled and m.phase == 'rec'
    if rank == 0: torch.save(dict(v=m.bank.bank_video, a=m.bank.bank_audio), out)


def test_snippet_bank_on_two_processes_equals_one_and_matches_the_snippets(gloo, tmp_path):
    _fill(0, 1, tmp_path / 'one.pt')
    gloo(_fill, 2, tmp_path / 'two.pt')
    one, two = torch.load(tmp_path / 'one.pt'), torch.load(tmp_path / 'two.pt')
    for k in ('v', 'a'): assert torch.allclose(one[k], two[k], atol=1e-5), k
    assert one['v'].shape == (8 * 4, 8) and torch.allclose(one['v'].norm(dim=1), torch.ones(32), atol=1e-5)
    # row clip * T + t holds snippet t of clip `clip`
    from avlearn.engine.data import build_datasets
    from avlearn.papers.cognizance import Cognizance, split_snippets
    cfg = _cfg('method=cognizance', f'method_args={{{COG}, bank_init: encode}}')
    train_set, _ = build_datasets(cfg)
    torch.manual_seed(0)
    model = Cognizance(cfg, len(train_set)).build_model().eval()
    item = train_set[5]
    sv, sa = split_snippets(item['video'][None], item['audio'][None], 4)
    with torch.no_grad(): v, _ = model(sv[0], sa[0])
    assert torch.allclose(one['v'][5 * 4:6 * 4], v, atol=1e-5)


def _train(out, *extra, launcher=()):
    return subprocess.run([*launcher, str(BIN / 'avlearn-train'), '--out', str(out), '--no_progress', '--set', *TINY,
                           *extra], env=ENV, capture_output=True, text=True, timeout=600)


def test_cognizance_trains_on_two_processes_from_an_avid_cma_checkpoint(tmp_path):
    r = _train(tmp_path / 'avid', 'max_steps=2', 'method=avid_cma', 'method_args={cma_k: 2, n_negatives: 8}')
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = sorted((tmp_path / 'avid').glob('ckpt_*.pt'))[-1]
    args = f"method_args={{{COG}, bank_init: encode, init_checkpoint: '{ckpt}'}}"
    r = _train(tmp_path / 'two', 'epochs=3', 'method=cognizance', args,
               launcher=(str(BIN / 'torchrun'), '--nproc_per_node=2', f'--master_port={free_port()}'))
    assert r.returncode == 0 and 'finished at step 6/6' in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'memory bank filled' in r.stdout
    for e, phase in enumerate(('rec', 'avid', 'rec')): assert f'epoch {e} trains with L_{phase}' in r.stdout
    recs = [json.loads(l) for l in (tmp_path / 'two' / 'metrics.jsonl').read_text().splitlines()]
    assert [x['rec_phase'] for x in recs if 'rec_phase' in x] == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    # the continuation started from the AVID-CMA weights: its model holds them plus the new modules
    from avlearn.papers.cognizance import Cognizance
    model = Cognizance(_cfg('method=cognizance', args), 8).build_model()
    start = torch.load(ckpt, weights_only=False)['model']
    for k, v in start.items(): assert torch.equal(model.state_dict()[k], v), k
    assert {k.split('.')[0] for k in model.state_dict()} - {k.split('.')[0] for k in start} == {
        'projection', 'mask_token', 'transformer', 'split'}


def test_resume_keeps_the_phase(tmp_path):
    args = f"method_args={{{COG}}}"
    r = _train(tmp_path / 'run', 'epochs=2', 'checkpoint_every=1', 'method=cognizance', args)
    assert r.returncode == 0, r.stderr[-2000:]
    from avlearn.papers.cognizance import Cognizance
    state = torch.load(sorted((tmp_path / 'run').glob('ckpt_*.pt'))[-1], weights_only=False)
    m = Cognizance(_cfg('method=cognizance', args), 8)
    m.load_state_dict(state['method'])
    assert m.phase == 'avid' and m.epoch == 1


def test_full_scale_config_builds_and_dry_runs_at_small_frames():
    "The config's method, bank and transformer at its real T, cma_k and negatives, on 32-pixel synthetic clips."
    from avlearn.engine.trainer import train
    over = ['data.size=32', 'model.video=tiny_r2plus1d', 'model.audio=tiny_audio', 'model.sync_bn=false',
            'data.clip_duration=2.0', 'data.sample_rate=8000']
    t = train('cognizance_audioset', overrides=over, dry_run=True, progress=False)
    assert t.step == 2 and t.method.args.n_snippets == 8 and t.method.bank.n == 8 * t.method.n_clips


@pytest.mark.slow
def test_full_scale_config_dry_run_at_real_shapes():
    "R(2+1)D-18 at 224 px, 2 clips of 8 snippets of 16 frames: minutes and more than 11 GB of memory on a CPU."
    from avlearn.engine.trainer import train
    t = train('cognizance_audioset', dry_run=True, progress=False)
    assert t.step == 2


@pytest.mark.slow
def test_full_scale_stack_forward_at_real_shapes_in_bounded_memory():
    """The config's whole stack forward on one 8 s clip at 224 px, a snippet at a time without gradients: about 2
    minutes and 1.6 GB on a loaded CPU (the dry run above needs more than 11 GB)."""
    from avlearn.engine.config import load_config
    from avlearn.papers.cognizance import Cognizance, split_snippets, mask_snippets, reconstruction_loss
    cfg = load_config('cognizance_audioset')
    m = Cognizance(cfg, 5); model = m.build_model().eval()
    T, d = m.args.n_snippets, cfg.data
    video = torch.rand(1, 3, int(d.clip_duration * d.fps), d.size, d.size)
    sv, sa = split_snippets(video, torch.randn(1, int(d.clip_duration * d.sample_rate)) * 0.1, T)
    assert sv.shape == (1, 8, 3, 16, 224, 224) and sa.shape == (1, 8, 24000)
    with torch.no_grad():
        v, a = (torch.stack(x, 1) for x in zip(*[model(sv[:, t], sa[:, t]) for t in range(T)]))
        mask = mask_snippets(1, T, m.args.mask_ratio)
        h = model.contextualise(model.joint(v, a), mask)
        loss = reconstruction_loss(*model.reconstruct(h), v, a, mask)
    assert v.shape == a.shape == (1, 8, 128) and h.shape == (1, 8, 256) and int(mask.sum()) == 2
    assert torch.isfinite(loss)


def test_bad_inputs_of_issue_17():
    "Sequences shorter than two snippets, mask ratios outside (0, 1), a mask that would cover every snippet."
    from avlearn.papers.cognizance import n_masked, mask_snippets, split_snippets, reconstruction_loss, t_test_p
    with pytest.raises(ValueError, match='shorter than two snippets'): n_masked(1)
    with pytest.raises(ValueError, match='shorter than two snippets'): mask_snippets(4, 1)
    with pytest.raises(ValueError, match='shorter than two snippets'):
        split_snippets(torch.zeros(2, 3, 4, 8, 8), torch.zeros(2, 100), 1)
    for ratio in (0, 1, -0.1, 1.5, float('nan')):
        with pytest.raises(ValueError, match=r'mask_ratio must be in \(0, 1\)'): n_masked(8, ratio)
    with pytest.raises(TypeError, match='mask_ratio must be a real number'): n_masked(8, '0.3')
    with pytest.raises(ValueError, match='would mask 3 of 3 snippets'): n_masked(3, 0.9)
    with pytest.raises(ValueError, match='at least one snippet'):
        reconstruction_loss(*[torch.zeros(1, 3, 2)] * 4, torch.zeros(1, 3, dtype=torch.bool))
    for bad in ('{n_snippets: 1}', '{mask_ratio: 0}', '{mask_ratio: 1.0}', '{n_snippets: 2, mask_ratio: 0.8}'):
        with pytest.raises(ValueError, match='n_snippets|mask_ratio'): _cfg('method=cognizance', f'method_args={bad}')
    with pytest.raises(ValueError, match='do not split into n_snippets=3'):
        split_snippets(torch.zeros(2, 3, 8, 8, 8), torch.zeros(2, 100), 3)
    with pytest.raises(ValueError, match='at least two finite values'): t_test_p([1.0, float('nan')])
