"""What pre-resizing buys: clips/s of `avlearn.media.read_clip` on a 640x480 source vs copies re-encoded by
`avlearn.datasets.resize_video` (short side 256 / 128, keyframe every second or encoder default), all measured in this run.

    .venv/bin/python benchmarks/resize_decode.py [--seconds 10] [--reads 20]

Each read decodes a 1 s window at 16 fps from a random start (the same starts for every file), scaled to a short side
of 128 px as a training pipeline would before cropping 112 px. Ratios are against the original file.
"""
import argparse, shutil, tempfile, time
from pathlib import Path

import numpy as np
import torch

from avlearn.data import ToyWorld, ToyWorldConfig
from avlearn.datasets import resize_video
from avlearn.media import probe, read_clip, write_av_file


def make_source(path, seconds, fps=25, size=(480, 640), seed=0):
    """A `seconds`-long clip at `fps`: toy-world frames upscaled to `size` with its audio (H.264 crf 23 + AAC).

    Upscaled toy frames are smooth, so the source has a low bit rate (~0.1 Mbit/s, real 480p footage has ~1 Mbit/s):
    the speed-ups printed are for decoding cost that grows with resolution, not with bit rate."""
    n = int(seconds * fps)
    world = ToyWorld(ToyWorldConfig(n_frames=n, size=64, fps=float(fps), sample_rate=16000), n=1, seed=seed)
    clip = world[0]
    frames = torch.nn.functional.interpolate(clip['video'].permute(1, 0, 2, 3), size=size, mode='bilinear')
    write_av_file(path, (frames.permute(0, 2, 3, 1) * 255).round().byte(), clip['audio'], fps=float(fps), sample_rate=16000,
                  crf=23)
    return path


def clips_per_second(path, starts, size=128):
    read_clip(path, float(starts[0]), 1.0, fps=16., size=size)            # warm the page cache
    t0 = time.perf_counter()
    for s in starts: read_clip(path, float(s), 1.0, fps=16., size=size)
    return len(starts) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=float, default=10.)
    ap.add_argument('--reads', type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix='avlearn_resize_bench_'))
    t0 = time.perf_counter()
    src = make_source(tmp / 'src.mp4', args.seconds)
    p = probe(src)
    print(f'source: {p["width"]}x{p["height"]}, {args.seconds:g} s at 25 fps, '
          f'{src.stat().st_size * 8 / args.seconds / 1e6:.2f} Mbit/s, written in {time.perf_counter() - t0:.1f} s')
    variants = {'original 640x480 (x264 default GOP 250)': src}
    for short, key in [(256, 1.), (128, 1.), (128, 0.)]:
        name = f'short side {short}, ' + (f'keyframe every {key:g} s' if key else 'encoder default GOP')
        dst = tmp / f'r{short}_{key:g}.mp4'
        t0 = time.perf_counter(); resize_video(src, dst, short_side=short, keyint_s=key)
        print(f'resize to {name}: {time.perf_counter() - t0:.2f} s for {args.seconds:g} s of video')
        variants[name] = dst
    starts = np.random.default_rng(0).uniform(0, args.seconds - 1.0, args.reads)
    ref = None
    print(f'\n{"file":48s} {"size KiB":>9s} {"clips/s":>8s} {"vs original":>12s}')
    for name, p in variants.items():
        cps = clips_per_second(p, starts)
        ref = ref or cps
        print(f'{name:48s} {p.stat().st_size // 1024:9d} {cps:8.2f} {cps / ref:11.2f}x')
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
