"""Encoder speed benchmark: forward + backward time of the tiny CPU encoders against the full-size ones, same run.

Each encoder gets a batch in its own input format (video (B, 3, T, H, W), log-mel (B, 1, 40, 101)); the tiny encoders
on the toy world's clips (16x64x64), R(2+1)D-18 both on toy clips and at the papers' 30x112x112 (GPU, or --full on CPU).
Times are the minimum over repetitions after one warm-up (the least noisy statistic on a shared machine), reported per
clip because the full-size encoders run on smaller batches (--big-batch) to keep the run short on CPU; ratios are
against the tiny encoder of the same modality measured in the same run. The issue's target: TinyR2Plus1D forward+backward on 32 toy clips
well under a second on one CPU core.

    .venv/bin/python benchmarks/models_speed.py            # one CPU thread (about a minute on an idle core)
    .venv/bin/python benchmarks/models_speed.py --threads 2 --batch 16
"""
from __future__ import annotations
import argparse, time
import torch
from avlearn.core import default_device
from avlearn.models import TinyR2Plus1D, TinyAudioNet, r2plus1d_18, AudioResNet9, count_parameters


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def fwd_bwd(model, x, dev, reps):
    "Minimum wall time of one forward + backward pass over `reps` repetitions, after a warm-up."
    model.to(dev).train(); x = x.to(dev)
    model(x).sum().backward(); sync(dev)
    best = float('inf')
    for _ in range(reps):
        model.zero_grad(set_to_none=True)
        t = time.perf_counter(); model(x).sum().backward(); sync(dev); best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--threads', type=int, default=1, help='CPU threads for torch')
    ap.add_argument('--batch', type=int, default=32, help='batch of the tiny encoders')
    ap.add_argument('--big-batch', type=int, default=2, help='batch of the full-size encoders (8 on GPU)')
    ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--full', action='store_true', help='also R(2+1)D-18 at 30x112x112 on CPU (slow)')
    args = ap.parse_args()
    torch.set_num_threads(args.threads); torch.manual_seed(0)
    dev = default_device(); B = args.batch
    print(f"device: {dev}, threads: {torch.get_num_threads()}, batch: {B}")
    b = B if dev.type == 'cuda' else args.big_batch
    video, spec = lambda n: torch.rand(n, 3, 16, 64, 64), lambda n: torch.randn(n, 1, 40, 101)
    rows = [('TinyR2Plus1D', 'video', TinyR2Plus1D(), video(B)),
            ('R(2+1)D-18', 'video', r2plus1d_18(), video(b)),
            ('TinyAudioNet', 'audio', TinyAudioNet(), spec(B)),
            ('AudioResNet9', 'audio', AudioResNet9(), spec(b))]
    if dev.type == 'cuda' or args.full:
        rows.append(('R(2+1)D-18 30x112x112', 'video', r2plus1d_18(), torch.rand(min(b, 8), 3, 30, 112, 112)))
    ref = {}
    print(f"{'encoder':<24}{'input':<24}{'params':>12}{'fwd+bwd s':>11}{'ms/clip':>9}{'vs tiny':>9}")
    for name, kind, model, x in rows:
        t = fwd_bwd(model, x, dev, args.reps)
        per_clip = t / x.shape[0]
        ref.setdefault(kind, per_clip)
        print(f"{name:<24}{str(tuple(x.shape)):<24}{count_parameters(model):>12,}{t:>11.3f}{per_clip * 1e3:>9.1f}"
              f"{per_clip / ref[kind]:>8.0f}x")


if __name__ == '__main__':
    main()
