"""A run folder is a unit of state (issue 22, items 1-7): dry runs leave it alone, a changed config is not resumed
silently, one writer at a time, a run that trained nothing fails, metrics heal after a torn write, bad values and
unreadable checkpoints give one clear line, a full disk keeps the previous checkpoint."""
import errno, json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from avlearn.engine.config import load_config
from avlearn.engine.trainer import train, Trainer, read_metrics
from avlearn.engine.checkpoints import (list_checkpoints, save_checkpoint, load_checkpoint, CheckpointError,
                                        RunFolderError, acquire_lock)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0', MPLBACKEND='Agg')
TINY = ['data.n_train=16', 'data.n_test=8', 'data.batch_size=8', 'data.world={n_frames: 4, size: 16}',
        'model.video_args={width: 4, out_dim: 8}', 'model.audio_args={width: 4, out_dim: 8}', 'model.proj_dim=8',
        'eval_tasks=[action]', 'epochs=4', 'checkpoint_every=2']


def _run(out, *extra, **kw):
    return train(None, out, [*TINY, *extra], progress=False, **kw)


def _cli(*args):
    return subprocess.run([str(BIN / 'avlearn-train'), *args], env=ENV, capture_output=True, text=True)


def test_dry_run_leaves_an_existing_run_alone(tmp_path):
    _run(tmp_path, 'max_steps=2')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    _run(tmp_path, dry_run=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


@pytest.mark.parametrize('change,key', [('optim.lr=0.01', 'optim.lr'), ('method=avid_cma;method_args={cma_k: 2}', 'method'),
                                        ('data.batch_size=4', 'data.batch_size'), ('seed=3', 'seed'),
                                        ('model.video_args={width: 8, out_dim: 8}', 'model.video_args'),
                                        ('optim.name=sgd', 'optim.name')])
def test_a_changed_config_is_not_resumed_silently(tmp_path, change, key):
    _run(tmp_path, 'max_steps=2')
    saved = (tmp_path / 'config.json').read_text()
    with pytest.raises(RunFolderError, match=rf"started with another config[\s\S]*{key}: "):
        _run(tmp_path, 'max_steps=4', *change.split(';'))
    assert (tmp_path / 'config.json').read_text() == saved             # config.json still tells the truth


def test_allowed_changes_are_logged_and_force_resume_accepts_the_rest(tmp_path):
    _run(tmp_path, 'max_steps=2')
    tr = _run(tmp_path, 'max_steps=4')                                  # max_steps may change
    assert tr.step == 4
    assert {'max_steps': [2, 4]} in [r['config_changes'] for r in read_metrics(tmp_path) if 'config_changes' in r]
    tr = _run(tmp_path, 'max_steps=6', 'optim.lr=0.01', force_resume=True)
    assert tr.step == 6 and tr.optimizer.param_groups[0]['initial_lr'] == 0.01


def test_one_writer_at_a_time(tmp_path):
    acquire_lock(tmp_path)                                              # this (living) process holds the folder
    r = _cli('--out', str(tmp_path), '--no_progress', '--set', *TINY, 'max_steps=2')
    assert r.returncode == 2 and f'is in use by process {os.getpid()}' in r.stderr and not list_checkpoints(tmp_path)
    (tmp_path / '.lock').write_text(json.dumps(dict(pid=2 ** 22 + 999, host=os.uname().nodename, since=0)))
    with pytest.warns(UserWarning, match='stale lock'): tr = _run(tmp_path, 'max_steps=2')   # a dead holder's lock
    assert tr.step == 2 and not (tmp_path / '.lock').exists()


def _broken_manifest(d: Path, n=8) -> Path:
    rows = ['path,duration,action']
    for i in range(n):
        f = d / f'broken_{i}.mp4'; f.write_bytes(b'\x00not a video' * 50); rows.append(f'{f},1.0,{i % 2}')
    (d / 'manifest.csv').write_text('\n'.join(rows) + '\n')
    return d / 'manifest.csv'


def test_a_run_with_no_usable_item_fails(tmp_path):
    m = _broken_manifest(tmp_path)
    with pytest.raises(RuntimeError, match='no usable training item'):
        _run(tmp_path / 'run', 'data.kind=manifest', f'data.train_manifest={m}', 'data.on_error=skip', 'data.size=16')
    assert not list_checkpoints(tmp_path / 'run')


def test_metrics_heal_after_a_torn_line_and_duplicates(tmp_path):
    _run(tmp_path, 'max_steps=2')
    with open(tmp_path / 'metrics.jsonl', 'a') as fh:                   # steps logged after the checkpoint, then torn
        fh.write(json.dumps(dict(step=3, loss=1.0)) + '\n' + '{"step": 4, "lo')
    tr = _run(tmp_path, 'max_steps=4')
    steps = [r['step'] for r in read_metrics(tmp_path) if 'loss' in r]
    assert tr.step == 4 and steps == [1, 2, 3, 4]


def test_validation_on_the_command_line_is_one_line(tmp_path):
    for bad, msg in [('optim.clip_grad=-1', 'optim.clip_grad'), ('max_steps=-5', 'max_steps'),
                     ('checkpoint_every=0', 'checkpoint_every'), ('optim.lr=.inf', 'optim.lr')]:
        r = _cli('--out', str(tmp_path / 'x'), '--no_progress', '--set', *TINY, bad)
        assert r.returncode == 2 and r.stderr.startswith(f'avlearn-train: error: {msg}'), r.stderr
        assert 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli('--out', str(tmp_path / 'y'), '--no_progress', '--set', *TINY, 'max_steps=1', 'optim.lr=1e-3',
             'optim.weight_decay=1e-4')
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / 'y' / 'config.json').read_text())['optim']['lr'] == 1e-3
    r = _cli('--out', str(tmp_path / 'z'), '--no_progress', '--debug', '--set', *TINY, 'max_steps=-5')
    assert r.returncode != 0 and 'Traceback' in r.stderr


def test_every_checkpoint_unreadable_is_an_error(tmp_path):
    _run(tmp_path, 'max_steps=2')
    for p in list_checkpoints(tmp_path): p.write_bytes(b'garbage')
    with pytest.raises(CheckpointError, match='every checkpoint .* is unreadable'): _run(tmp_path, 'max_steps=4')


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    state = dict(model={}, optimizer={}, step=1, epoch=0, config={})
    save_checkpoint(state, tmp_path, 1)
    def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(torch, 'save', full)
    with pytest.raises(CheckpointError, match=r'disk is full.*ckpt_000000001.pt is intact'):
        save_checkpoint(dict(state, step=2), tmp_path, 2)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ['ckpt_000000001.pt'] and not list(tmp_path.glob('.*.tmp'))
    assert load_checkpoint(tmp_path / 'ckpt_000000001.pt')['step'] == 1


def test_a_real_full_disk(tmp_path):
    "On a real 300 KB tmpfs (skipped where mounting is not allowed): the run stops with a clear error."
    d = tmp_path / 'small'; d.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=300k', 'tmpfs', str(d)], capture_output=True).returncode:
        pytest.skip('cannot mount a small tmpfs here')
    try:
        with pytest.raises((CheckpointError, RunFolderError), match='disk is full|No space left'):
            _run(d, 'max_steps=4', 'model.video_args={width: 16, out_dim: 64}')
        for p in list_checkpoints(d): load_checkpoint(p)                 # whatever was written reads back
    finally: subprocess.run(['umount', str(d)], capture_output=True)


def test_eval_names_a_missing_label_column(tmp_path):
    _run(tmp_path, 'max_steps=2')
    cfg = json.loads((tmp_path / 'config.json').read_text())
    for p in list_checkpoints(tmp_path):
        s = load_checkpoint(p); s['config']['eval_tasks'] = ['genre']; torch.save(s, p)
    r = subprocess.run([str(BIN / 'avlearn-eval'), '--out', str(tmp_path)], env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "none of the eval tasks ['genre']" in r.stderr and 'Traceback' not in r.stderr


def test_a_temporary_run_folder_goes_with_its_trainer():
    "`train(out=None)` trains in a temporary folder that lives as long as the returned trainer (no leak in /tmp)."
    import gc
    trainer = _run(None, 'max_steps=2')
    folder = Path(trainer.out)
    assert folder.name.startswith('avlearn-run-') and list(folder.glob('ckpt_*.pt'))
    del trainer; gc.collect()
    assert not folder.exists()
