"""avlearn.dist across processes: leaving the process group together. Rank 0 hosts the rendezvous store of `launch`;
if it returned while another rank was still destroying its group, that rank could abort (SIGABRT, "terminate called
without an active exception"), which once failed two 2-process tests under load."""
import time
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
