"""MemoryBank scales: one momentum update and one negative draw cost the same on a 20k-row and a 2M-row bank, unlike a
naive update that rebuilds the bank (`bank = bank.clone(); bank[idx] = ...`). Prints ratios measured in this run."""
import time
import torch
import torch.nn.functional as F
from avlearn.losses import MemoryBank


def timeit(fn, reps=20):
    fn()
    t = time.perf_counter()
    for _ in range(reps): fn()
    return (time.perf_counter() - t) / reps


def main(dim=128, batch=256, small=20_000, large=2_000_000):
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(batch, dim), dim=1)
    out = {}
    for n in (small, large):
        bank = MemoryBank(n, dim, modalities=('video',))
        idx = torch.randperm(n)[:batch]
        out[n] = dict(update=timeit(lambda: bank.update('video', idx, feats)),
                      negatives=timeit(lambda: bank.get('video', bank.sample_negatives(idx, 1024))),
                      naive=timeit(lambda: bank.bank_video.clone().index_copy_(0, idx, feats), reps=3))
        del bank
    for k in ('update', 'negatives', 'naive'):
        print(f"{k:10s} {small:>9,} rows: {1e3 * out[small][k]:8.3f} ms   {large:>9,} rows: {1e3 * out[large][k]:8.3f} ms   "
              f"ratio large/small = {out[large][k] / out[small][k]:6.2f}")
    print(f"in-place update vs naive full-copy update on {large:,} rows: {out[large]['naive'] / out[large]['update']:.0f}x faster")


if __name__ == '__main__':
    main()
