"""Reliability of the training engine, for real: torchrun with 2 gloo processes, kill -9 and resume, SIGTERM,
corrupt checkpoints, dry runs of the full-scale configs. All on CPU."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from avlearn.dist import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# a tiny, fast, deterministic run: GroupNorm so that 1 process x 2B and 2 processes x B compute the same thing
TINY = ['data.n_train=64', 'data.n_test=16', 'data.world={n_frames: 8, size: 32}', 'data.cache=false',
        'model.video_args={width: 4, out_dim: 16, norm: group}', 'model.audio_args={width: 4, out_dim: 16, norm: group}',
        'model.proj_dim=8', 'optim.warmup_epochs=0', 'epochs=3', 'max_steps=0', 'deterministic=true', 'keep_last=100']
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0', MPLBACKEND='Agg')


def _train_cmd(out, *extra, launcher=()):
    return [*launcher, str(BIN / 'avlearn-train'), '--config', str(ROOT / 'configs' / 'demo.yaml'), '--out', str(out),
            '--no_progress', '--set', *TINY, *extra]


def _losses(out):
    "Loss per step from metrics.jsonl; a step logged twice (re-run after a resume) keeps its last value."
    by_step = {}
    for line in (Path(out) / 'metrics.jsonl').read_text().splitlines():
        r = json.loads(line)
        if 'loss' in r: by_step[r['step']] = r['loss']
    return [by_step[s] for s in sorted(by_step)]


def _state(out):
    from avlearn.engine.checkpoints import load_latest_checkpoint
    state, _ = load_latest_checkpoint(out)
    return state


def _one_and_two_processes(tmp_path, steps, *extra):
    "Final states of the same run as 1 process x 16 clips and as 2 torchrun processes x 8 clips."
    one, two = tmp_path / 'one', tmp_path / 'two'
    subprocess.run(_train_cmd(one, *extra, 'data.batch_size=16', f'max_steps={steps}'), check=True, env=ENV, capture_output=True)
    r = subprocess.run(_train_cmd(two, *extra, 'data.batch_size=8', f'max_steps={steps}',
                                  launcher=(str(BIN / 'torchrun'), '--nproc_per_node=2', f'--master_port={free_port()}')),
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _state(one), _state(two)
    assert a['step'] == b['step'] == steps and b['world_size'] == 2
    return one, two, a, b


def test_two_process_ddp_equals_one_process(tmp_path):
    one, two, a, b = _one_and_two_processes(tmp_path, 4)
    assert torch.allclose(torch.tensor(_losses(one)), torch.tensor(_losses(two)), atol=1e-5)
    for k in a['model']:
        if a['model'][k].is_floating_point():
            assert torch.allclose(a['model'][k], b['model'][k], atol=1e-5), k


def _run_until(cmd, out, min_step, sig):
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        m = Path(out) / 'metrics.jsonl'
        if m.exists() and sum(1 for l in m.read_text().splitlines() if '"loss"' in l) >= min_step: break
        time.sleep(0.05)
    p.send_signal(sig)
    p.wait(60)
    return p


def test_kill9_resume_matches_uninterrupted_run(tmp_path):
    ref, cut = tmp_path / 'ref', tmp_path / 'cut'
    extra = ('data.batch_size=8', 'checkpoint_every=3')
    subprocess.run(_train_cmd(ref, *extra), check=True, env=ENV, capture_output=True)
    for kill_at in (5, 11, 17):               # several kill points, mid-epoch (8 steps per epoch)
        p = _run_until(_train_cmd(cut, *extra), cut, kill_at, signal.SIGKILL)
        assert p.returncode == -signal.SIGKILL
        from avlearn.engine.checkpoints import list_checkpoints, load_checkpoint
        for ck in list_checkpoints(cut): load_checkpoint(ck)       # no corrupt checkpoint left behind
    r = subprocess.run(_train_cmd(cut, *extra), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0 and 'resumed from' in r.stdout, r.stdout + r.stderr[-2000:]
    a, b = _losses(ref), _losses(cut)
    assert len(a) == len(b) == 24
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-6, atol=1e-7), (a, b)
    sa, sb = _state(ref), _state(cut)
    assert all(torch.equal(sa['model'][k], sb['model'][k]) for k in sa['model'])


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    out = tmp_path / 'run'
    p = _run_until(_train_cmd(out, 'data.batch_size=8', 'checkpoint_every=1000'), out, 4, signal.SIGTERM)
    assert p.returncode == 0, p.stderr.read().decode()[-2000:]
    st = _state(out)
    assert 4 <= st['step'] < 24                   # saved where it stopped, not at an epoch end by chance only
    r = subprocess.run(_train_cmd(out, 'data.batch_size=8', 'checkpoint_every=1000'), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0 and _state(out)['step'] == 24


def test_corrupt_checkpoint_falls_back(tmp_path):
    out = tmp_path / 'run'
    subprocess.run(_train_cmd(out, 'data.batch_size=8', 'checkpoint_every=4', 'max_steps=8'), check=True, env=ENV, capture_output=True)
    from avlearn.engine.checkpoints import list_checkpoints, load_checkpoint, CheckpointError
    newest = list_checkpoints(out)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    with pytest.raises(CheckpointError, match=newest.name):
        load_checkpoint(newest)
    r = subprocess.run(_train_cmd(out, 'data.batch_size=8', 'checkpoint_every=4', 'max_steps=12'), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'unreadable' in r.stdout and 'resumed from' in r.stdout and 'ckpt_000000004.pt' in r.stdout


def test_bad_config_errors():
    from avlearn.engine.config import load_config
    with pytest.raises(ValueError, match='unknown config key'): load_config(overrides=['optim.lrr=0.1'])
    with pytest.raises(ValueError, match='method must be one of'): load_config(overrides=['method=nope'])
    with pytest.raises(ValueError, match='data.batch_size'): load_config(overrides=['data.batch_size=0'])
    with pytest.raises(FileNotFoundError): load_config('no/such.yaml')


def _toy_config(p: Path) -> bool:
    "demo.yaml and the miniatures' configs train on the toy world: they are not full scale."
    import yaml
    return (yaml.safe_load(p.read_text()).get('data') or {}).get('kind') == 'toy'


FULL_SCALE = sorted(p for p in (ROOT / 'configs').glob('*.yaml') if not _toy_config(p))


@pytest.mark.slow
@pytest.mark.parametrize('config', FULL_SCALE, ids=lambda p: p.stem)
def test_full_scale_config_dry_run(config, tmp_path):
    r = subprocess.run([str(BIN / 'avlearn-train'), '--config', str(config), '--out', str(tmp_path), '--dry_run', '--no_progress'],
                       env=dict(ENV, OMP_NUM_THREADS='2'), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and 'finished at step 2/2' in r.stdout, r.stdout + r.stderr[-3000:]


def test_broken_files_train_to_the_end_under_skip_policy(tmp_path):
    "A manifest with missing, garbage and truncated files trains to the end with on_error=skip; counts are logged."
    import csv
    from avlearn.data import ToyWorld, ToyWorldConfig, export_clips
    man = export_clips(ToyWorld(ToyWorldConfig(n_frames=16, size=32), n=12, seed=0), tmp_path / 'media')
    rows = list(csv.DictReader(open(man)))
    (tmp_path / 'media' / 'garbage.mp4').write_bytes(os.urandom(5000))
    good = (tmp_path / 'media' / rows[0]['path']).read_bytes()
    (tmp_path / 'media' / 'truncated.mp4').write_bytes(good[: len(good) // 3])
    for name in ('missing.mp4', 'garbage.mp4', 'truncated.mp4'): rows.append(dict(rows[1], path=name))
    with open(man, 'w', newline='') as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0])); w.writeheader(); w.writerows(rows)
    out = tmp_path / 'run'
    r = subprocess.run(_train_cmd(out, 'data.kind=manifest', f'data.train_manifest={man}', f'data.test_manifest={man}',
                                  'data.clip_duration=0.5', 'data.fps=16', 'data.size=32', 'data.on_error=skip',
                                  'data.batch_size=3', 'epochs=2', 'data.world={}'),
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert 'bad media' in r.stdout
    recs = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    errs = [x for x in recs if 'data_errors' in x]
    assert errs and sum(errs[-1]['data_errors'].values()) >= 3 * 2      # three bad files met in each of 2 epochs
    assert _state(out)['epoch'] == 2


def test_manifest_clips_of_any_aspect_ratio_batch_and_train(tmp_path):
    "Real files of different frame shapes leave the pipeline as size x size squares (random crop / centre crop) and train."
    import numpy as np
    from avlearn.media import write_av_file
    from avlearn.engine.config import load_config
    from avlearn.engine.data import build_datasets
    from avlearn.media import collate_skip
    rng = np.random.default_rng(0)
    rows = ['path,action']
    for i, (h, w) in enumerate([(32, 48), (48, 32), (40, 40), (36, 64)] * 2):
        write_av_file(tmp_path / f'v{i}.mp4', rng.integers(0, 255, (16, h, w, 3), dtype=np.uint8),
                      (0.1 * rng.standard_normal(16000)).astype(np.float32), 16, 16000)
        rows.append(f'v{i}.mp4,{i % 2}')
    (tmp_path / 'm.csv').write_text('\n'.join(rows) + '\n')
    over = ['data.kind=manifest', f'data.train_manifest={tmp_path / "m.csv"}', f'data.test_manifest={tmp_path / "m.csv"}',
            'data.clip_duration=0.5', 'data.size=24', 'data.normalize=true']
    train, test = build_datasets(load_config(overrides=over))
    b = collate_skip([train[i] for i in range(len(train))])
    assert b['video'].shape == (8, 3, 8, 24, 24) and b['audio'].shape == (8, 8000)
    assert b['video'].min() < 0                                  # normalised
    e1, e2 = test[1]['video'], test[1]['video']
    assert e1.shape == (3, 8, 24, 24) and torch.equal(e1, e2)    # the test crop is deterministic
    out = tmp_path / 'run'
    r = subprocess.run(_train_cmd(out, *over, 'data.batch_size=4', 'epochs=1', 'data.world={}'), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    with pytest.raises(ValueError, match='crop_scale'): load_config(overrides=over + ['data.crop_scale=[0.5, 0.1]'])
    with pytest.raises(ValueError, match='on_error'): load_config(overrides=['data.on_error=ignore'])


def test_channels_last_3d_on_an_audio_visual_model():
    "Only the 5-D (video) weights change layout; the 2-D audio convolutions must not break (as model.to(...) would)."
    from avlearn.engine.config import load_config
    from avlearn.engine.method import build_av_model
    from avlearn.engine.trainer import to_channels_last_3d
    m = build_av_model(load_config(overrides=['model.video_args={width: 4, out_dim: 8}', 'model.audio_args={width: 4, out_dim: 8}']))
    with pytest.raises(RuntimeError): build_av_model(load_config()).to(memory_format=torch.channels_last_3d)
    to_channels_last_3d(m)
    w5 = [p for p in m.parameters() if p.ndim == 5]
    assert w5 and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in w5)
    v, a = m(torch.rand(2, 3, 8, 32, 32).contiguous(memory_format=torch.channels_last_3d), torch.randn(2, 16000) * 0.1)
    assert v.shape == a.shape and v.shape[0] == 2 and torch.isfinite(v).all()


@pytest.mark.parametrize('config', FULL_SCALE, ids=lambda p: p.stem)
def test_full_scale_config_loads_and_builds(config):
    "Fast check of every full-scale config: it validates, its method and model build, and its data transforms exist."
    from avlearn.engine.config import load_config
    from avlearn.engine.method import get_method
    from avlearn.engine.data import manifest_transforms
    cfg = load_config(config)
    if cfg.method_args.get('text_backbone') == 'transformers':
        pytest.skip("a pretrained language model from local weights (transformers); tests/test_mmp.py checks the "
                    "config with the from-scratch text encoder and HFTextEncoder with a tiny random model")
    method = get_method(cfg.method)(cfg, 1000)
    model = method.build_model()
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
    if cfg.data.kind == 'manifest': assert all(callable(t) for t in manifest_transforms(cfg.data))


def test_kill_during_checkpoint_write_leaves_no_corrupt_checkpoint(tmp_path, monkeypatch):
    "A process dying inside save_checkpoint (here: torch.save failing after writing half the bytes) leaves only a temp file."
    from avlearn.engine import checkpoints as training
    state = dict(model={'w': torch.ones(1000)}, optimizer={}, step=1, epoch=0, config={})
    training.save_checkpoint(state, tmp_path, 1)
    real_save = torch.save
    def dying_save(obj, fh):
        import io
        buf = io.BytesIO(); real_save(obj, buf); fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise KeyboardInterrupt('killed mid-write')
    monkeypatch.setattr(training.torch, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt): training.save_checkpoint(dict(state, step=2), tmp_path, 2)
    monkeypatch.setattr(training.torch, 'save', real_save)
    assert [p.name for p in training.list_checkpoints(tmp_path)] == ['ckpt_000000001.pt']   # the new name never appeared
    assert list(tmp_path.glob('.ckpt_*.tmp'))                                                # only its temp file did
    loaded, path = training.load_latest_checkpoint(tmp_path)
    assert path.name == 'ckpt_000000001.pt' and loaded['step'] == 1


def test_two_processes_with_broken_files_train_to_the_end(tmp_path):
    "Under torchrun, skipped files make the processes' batches unequal (or empty): every step still runs on all of them."
    import csv
    from avlearn.data import ToyWorld, ToyWorldConfig, export_clips
    man = export_clips(ToyWorld(ToyWorldConfig(n_frames=16, size=32), n=12, seed=0), tmp_path / 'media')
    rows = list(csv.DictReader(open(man)))
    (tmp_path / 'media' / 'garbage.mp4').write_bytes(os.urandom(5000))
    rows += [dict(rows[1], path='missing.mp4'), dict(rows[2], path='garbage.mp4'), dict(rows[3], path='missing.mp4')]
    with open(man, 'w', newline='') as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0])); w.writeheader(); w.writerows(rows)
    out = tmp_path / 'run'
    r = subprocess.run(_train_cmd(out, 'data.kind=manifest', f'data.train_manifest={man}', f'data.test_manifest={man}',
                                  'data.clip_duration=0.5', 'data.size=32', 'data.on_error=skip', 'data.batch_size=2',
                                  'epochs=2', 'data.world={}',
                                  launcher=(str(BIN / 'torchrun'), '--nproc_per_node=2', f'--master_port={free_port()}')),
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    st = _state(out)
    assert st['epoch'] == 2 and st['world_size'] == 2 and 'bad media' in r.stdout


AVID = ['method=avid_cma', 'method_args={n_negatives: 32, cma_k: 4, cma_start_epoch: 1}']


def test_avid_cma_two_processes_equal_one_process(tmp_path):
    """The memory bank under torchrun: every process writes the whole global batch into its bank and draws the global
    batch's negatives from one seeded generator, so 2 processes x 8 clips = 1 process x 16 clips, bank included."""
    one, two, a, b = _one_and_two_processes(tmp_path, 6, *AVID)
    # steps 5-6 are in epoch 1 (4 steps per epoch): CMA positives are on there, and negatives read rows the other rank wrote
    assert torch.allclose(torch.tensor(_losses(one)), torch.tensor(_losses(two)), atol=1e-5)
    for k in ('bank_video', 'bank_audio'):
        assert torch.allclose(a['method']['bank'][k], b['method']['bank'][k], atol=1e-5), k
    for k in a['model']:
        if a['model'][k].is_floating_point(): assert torch.allclose(a['model'][k], b['model'][k], atol=1e-5), k


def test_avid_cma_resume_mid_epoch_restores_the_bank(tmp_path):
    "Resuming from a mid-epoch checkpoint continues the uninterrupted run exactly: bank, step-seeded negatives, CMA epoch."
    import shutil
    full, resumed = tmp_path / 'full', tmp_path / 'resumed'
    subprocess.run(_train_cmd(full, *AVID, 'data.batch_size=16', 'checkpoint_every=2'), check=True, env=ENV, capture_output=True)
    resumed.mkdir(); shutil.copy(full / 'ckpt_000000006.pt', resumed)            # epoch 1, batch 2 of 4
    st = torch.load(resumed / 'ckpt_000000006.pt', weights_only=False)
    assert st['batch_in_epoch'] == 2 and st['method']['step'] == 6 and st['method']['bank']['bank_video'].shape == (64, 8)
    subprocess.run(_train_cmd(resumed, *AVID, 'data.batch_size=16', 'checkpoint_every=2'), check=True, env=ENV, capture_output=True)
    a, b = _state(full), _state(resumed)
    assert a['step'] == b['step'] == 12
    assert torch.allclose(torch.tensor(_losses(full)[6:]), torch.tensor(_losses(resumed)), atol=1e-6)
    for k in ('bank_video', 'bank_audio'): assert torch.equal(a['method']['bank'][k], b['method']['bank'][k]), k
