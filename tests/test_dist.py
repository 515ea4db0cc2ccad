"""avlearn.dist across processes: leaving the process group together, and leaving no gloo worker thread behind.
Either failure can abort a process after its work is done (SIGABRT, "terminate called without an active exception"),
which once failed 2-process tests under load: rank 0, which hosts the rendezvous store of `launch`, returning while
another rank is still destroying its group, and a group pinned by `torch.distributed.nn` outliving its destruction."""
import time
from pathlib import Path
import pytest
import torch.distributed as tdist
from avlearn.dist import leave_distributed


def _slow_leaver(rank, world, out):
    "Every rank but 0 takes a second to destroy its group; each records when its `leave_distributed` returned."
    if rank != 0:
        destroy = tdist.destroy_process_group
        tdist.destroy_process_group = lambda *a, **k: (time.sleep(1.0), destroy(*a, **k))
    leave_distributed()
    (out / f'left_{rank}').write_text(repr(time.time()))


def test_rank_zero_leaves_last(gloo, tmp_path):
    gloo(_slow_leaver, 3, tmp_path, start_method='fork')
    left = [float((tmp_path / f'left_{r}').read_text()) for r in range(3)]
    assert left[0] >= max(left[1:]) - 0.05, left    # without the wait rank 0 returns about a second earlier


def _leave_twice(rank, world, out):
    leave_distributed(); leave_distributed()          # the second call (outside any group) does nothing
    (out / f'ok_{rank}').write_text('ok')


def test_leaving_twice_is_harmless(gloo, tmp_path):
    gloo(_leave_twice, 2, tmp_path, start_method='fork')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ok_0', 'ok_1']


def _gloo_threads() -> int:
    tasks = Path('/proc/self/task')
    return sum((t / 'comm').read_text().strip() == 'pt_gloo_runloop' for t in tasks.iterdir())


def _leave_after_torchvision(rank, world, out):
    "Import torchvision inside the group (as building a model does), leave, and count gloo's worker threads left."
    import torchvision  # noqa: F401  imports torch.distributed.nn, whose defaults would capture group.WORLD
    before = _gloo_threads()
    leave_distributed()
    (out / f'threads_{rank}').write_text(f'{before} {_gloo_threads()}')


@pytest.mark.skipif(not Path('/proc/self/task').is_dir(), reason='counts threads through /proc')
def test_leaving_joins_gloo_worker_threads(gloo, tmp_path):
    """A group that outlives `destroy_process_group` keeps gloo's worker threads, which can abort the process at
    exit while releasing the last collective's tensors (SIGABRT seen once in 30 runs of a 2-process test). 'spawn'
    starts a fresh interpreter, in which torchvision is first imported after the group exists."""
    gloo(_leave_after_torchvision, 2, tmp_path, start_method='spawn')
    for r in range(2):
        before, after = map(int, (tmp_path / f'threads_{r}').read_text().split())
        assert before > 0 and after == 0, (r, before, after)
