"""The AVID-CMA family beyond one process: the bank filled from a sharded pass equals the one-process fill, the
compositional method trains under torchrun with 2 gloo processes, and a continuation starts from an AVID-CMA
checkpoint's weights. Plus the bad inputs of issue 16 that the notebooks do not cover."""
import os, subprocess, sys
from pathlib import Path
import pytest
import torch
from avlearn.dist import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0', MPLBACKEND='Agg')
TINY = ['data.kind=synthetic', 'data.n_train=16', 'data.n_test=4', 'data.n_frames=6', 'data.size=32',
        'data.sample_rate=8000', 'data.clip_duration=0.5', 'data.batch_size=4', 'model.proj_dim=8',
        'model.video_args={width: 4, out_dim: 8}', 'model.audio_args={width: 4, out_dim: 8}', 'eval_tasks=[]']


def _cfg(*extra):
    from avlearn.engine.config import load_config
    return load_config(None, [*TINY, *extra])


def _context(rank, world, model, dataset):
    from avlearn.engine.method import RunContext
    from contextlib import nullcontext
    return RunContext(epoch=0, step=0, rank=rank, world_size=world, device=torch.device('cpu'), model=model,
                      train_set=dataset, batch_size=3, num_workers=0, seed=0, to_device=lambda b: b,
                      autocast=nullcontext, log=lambda m: None, log_record=lambda r: None,
                      reset_optimizer_state=lambda m: None)


def _fill(rank, world, out):
    "Fill an AVID-CMA bank on `world` processes and save rank 0's bank to `out`."
    from avlearn.engine.data import build_datasets
    from avlearn.papers.avid_cma import AVIDCMA
    cfg = _cfg('method=avid_cma', 'method_args={cma_k: 2, bank_init: encode}')
    train_set, _ = build_datasets(cfg)
    torch.manual_seed(0)
    m = AVIDCMA(cfg, len(train_set)); model = m.build_model()
    m.on_epoch_start(_context(rank, world, model, train_set))
    assert m.bank_filled
    if rank == 0: torch.save(dict(v=m.bank.bank_video, a=m.bank.bank_audio), out)


def test_fill_bank_on_two_processes_equals_one(gloo, tmp_path):
    _fill(0, 1, tmp_path / 'one.pt')
    gloo(_fill, 2, tmp_path / 'two.pt')
    one, two = torch.load(tmp_path / 'one.pt'), torch.load(tmp_path / 'two.pt')
    for k in ('v', 'a'): assert torch.allclose(one[k], two[k], atol=1e-5), k
    assert torch.allclose(one['v'].norm(dim=1), torch.ones(16), atol=1e-5)


def _train(out, *extra, launcher=()):
    return subprocess.run([*launcher, str(BIN / 'avlearn-train'), '--out', str(out), '--no_progress', '--set', *TINY,
                           'max_steps=2', *extra], env=ENV, capture_output=True, text=True, timeout=600)


def test_compositional_trains_on_two_processes_from_an_avid_cma_checkpoint(tmp_path):
    r = _train(tmp_path / 'avid', 'method=avid_cma', 'method_args={cma_k: 2, n_negatives: 8}')
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = sorted((tmp_path / 'avid').glob('ckpt_*.pt'))[-1]
    args = f"method_args={{cma_k: 2, n_negatives: 8, constraint: ec, composition: mha, mha_heads: 2, " \
           f"bank_init: encode, init_checkpoint: '{ckpt}', audio_unit_frames: 5}}"
    r = _train(tmp_path / 'two', 'method=compositional', args,
               launcher=(str(BIN / 'torchrun'), '--nproc_per_node=2', f'--master_port={free_port()}'))
    assert r.returncode == 0 and 'finished at step 2/2' in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'memory bank filled' in r.stdout
    # the continuation started from the AVID-CMA weights: its model holds them plus the composers
    from avlearn.papers.compositional import Compositional
    cfg = _cfg('method=compositional', args)
    model = Compositional(cfg, 16).build_model()
    start = torch.load(ckpt, weights_only=False)['model']
    for k, v in start.items(): assert torch.equal(model.state_dict()[k], v), k
    assert any(k.startswith('composer.') for k in model.state_dict())


def test_init_checkpoint_errors(tmp_path):
    from avlearn.papers.avid_cma import load_model_weights
    from avlearn.engine.method import build_av_model
    model = build_av_model(_cfg('method=avid_cma'))
    with pytest.raises(FileNotFoundError, match='method_args.init_checkpoint'): load_model_weights(model, tmp_path / 'no.pt')
    torch.save({'weights': {}}, tmp_path / 'bad.pt')
    with pytest.raises(ValueError, match="holds no 'model' weights"): load_model_weights(model, tmp_path / 'bad.pt')
    other = build_av_model(_cfg('method=avid_cma', 'model.proj_dim=16'))
    torch.save({'model': other.state_dict()}, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match='does not fit the model'): load_model_weights(model, tmp_path / 'other.pt')
    with pytest.raises(ValueError, match="bank_init must be 'random' or 'encode'"):
        _cfg('method=avid_cma', 'method_args={bank_init: zeros}')


def test_bad_inputs_of_issue_16():
    "Segment counts larger than the clip, M = 0, clips shorter than a segment, budgets outside (0, 1), empty summaries."
    import numpy as np
    from avlearn.papers.compositional import random_segmentation, unit_segmentation, encode_segments
    from avlearn.summarisation import (uniform_summary, simulate_users, video_f_score, train_summariser, ToySumMeConfig,
                                       kernel_change_points)
    with pytest.raises(ValueError, match=r'n_segments must be an int in \[1, 3\]'): random_segmentation(3, n_segments=4)
    with pytest.raises(ValueError, match='at least one segment'): random_segmentation(3, n_segments=0)
    with pytest.raises(ValueError, match='shorter than one frame'): random_segmentation(0)
    with pytest.raises(ValueError, match='shorter than one frame'): unit_segmentation(0, 4)
    with pytest.raises(ValueError, match='must sum'): encode_segments(lambda x: x, torch.zeros(2, 3, 4, 8, 8), [2, 3], 2)
    for budget in (0, 1, -0.1, 1.5, float('nan')):
        with pytest.raises(ValueError, match='budget'): uniform_summary(100, budget)
        with pytest.raises(ValueError, match='budget'): simulate_users([0.5, 0.2], 2, budget, 0.1, 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match='user_budget'): ToySumMeConfig(user_budget=1.2)
    video = dict(n_frames=8, picks=np.array([0, 4]), change_points=np.array([[0, 3], [4, 7]]),
                 user_summary=np.zeros((0, 8), dtype=int))
    with pytest.raises(ValueError, match='users >= 1'): video_f_score([0.2, 0.8], video)
    video['user_summary'] = np.zeros((2, 8), dtype=int)
    with pytest.raises(ValueError, match='empty'): video_f_score([0.2, 0.8], video)
    with pytest.raises(ValueError, match='shorter than one snippet'): train_summariser([torch.zeros(0, 4)])
    with pytest.raises(ValueError, match='at least one row'): kernel_change_points(torch.zeros(0, 4))
