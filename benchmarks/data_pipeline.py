"""Data pipeline throughput: clips/s of `avlearn.media.ManifestDataset` decoding data_samples-like mp4 files
(H.264 + AAC, 64x64 at 16 fps, 16 kHz audio), in the main process and with N DataLoader workers.

    .venv/bin/python benchmarks/data_pipeline.py [--manifest data_samples/manifest.csv] [--workers 1 2] [--clips 96]

Each item is a 1 s window (16 frames + 16,000 samples) at a random start, decoded with PyAV (one decoder thread).
Rows: decode only, and decode + `avlearn.transforms.train_transform` (crop 56, flip, jitter, log-mel, SpecAugment).
Ratios are against the single-process decode-only reference measured in this run; "per worker" divides a loader's
throughput by its number of workers. Worker start-up is timed separately (the loader is timed from its first batch).
If the manifest is missing or empty, 24 toy-world clips are exported into a temporary folder first.
"""
import argparse, os, tempfile, time
from pathlib import Path

import torch

from avlearn.media import ManifestDataset, collate_skip
from avlearn.transforms import train_transform


def make_samples(folder):
    from avlearn.data import ToyWorld, ToyWorldConfig, export_clips
    world = ToyWorld(ToyWorldConfig(n_frames=32), n=24, seed=0)
    return export_clips(world, folder)


def in_process(ds, n):
    t = time.perf_counter()
    for i in range(n): ds[i % len(ds)]
    return n / (time.perf_counter() - t)


def with_loader(ds, workers, batch_size=8):
    "(clips/s after the first batch, seconds until the first batch)."
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip,
                                         shuffle=False)
    it = iter(loader)
    first = next(it); t1 = time.perf_counter()
    n = 0
    for b in it: n += len(b['video'])
    t2 = time.perf_counter()
    return n / (t2 - t1), t1 - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--manifest', default='data_samples/manifest.csv')
    ap.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    ap.add_argument('--clips', type=int, default=96, help='clips per measurement')
    args = ap.parse_args()
    torch.set_num_threads(1)                            # what each DataLoader worker gets, so rows compare per process
    man = Path(args.manifest)
    tmp = None
    if not man.is_file() or sum(1 for _ in open(man)) < 2:
        tmp = tempfile.TemporaryDirectory(); man = make_samples(tmp.name)
        print(f'{args.manifest} missing or empty: exported 24 toy-world clips to {man.parent}')
    n_videos = sum(1 for _ in open(man)) - 1
    cpv = max(1, -(-args.clips // n_videos))
    kw = dict(clip_duration=1.0, fps=16, sample_rate=16000, clips_per_video=cpv, mode='train', seed=0, on_error='raise')
    plain = ManifestDataset(man, **kw)
    aug = ManifestDataset(man, transform=train_transform(size=56, sample_rate=16000), **kw)
    n = min(args.clips, len(plain))
    print(f'{n_videos} videos x {cpv} clips from {man}; {n} clips per row; cores available: {len(os.sched_getaffinity(0))}')
    in_process(plain, 8)                                 # warm-up (imports, first file opens)
    ref = in_process(plain, n)
    rows = [('main process, decode', 0, ref, None)]
    rows.append(('main process, decode + train_transform', 0, in_process(aug, n), None))
    for w in args.workers:
        for name, ds in (('decode', plain), ('decode + train_transform', aug)):
            rate, startup = with_loader(ds, w)
            rows.append((f'{w} worker{"s" if w > 1 else ""}, {name}', w, rate, startup))
    print(f"\n{'setting':45s} {'clips/s':>8s} {'per worker':>10s} {'vs ref':>7s} {'start-up s':>10s}")
    for name, w, rate, startup in rows:
        per = rate / w if w else rate
        print(f"{name:45s} {rate:8.1f} {per:10.1f} {rate / ref:6.2f}x {'' if startup is None else f'{startup:10.2f}'}")
    print(f"\nreference: {ref:.1f} clips/s decoded in the main process ({1000 / ref:.1f} ms per 1 s clip). "
          "The machine may be shared: compare ratios, not absolute numbers.")
    if tmp: tmp.cleanup()


if __name__ == '__main__':
    main()
