"""The cost of views (STiCA, seed 004 ch. 3, Tables 1a and 1f): time and memory of one training step of
`STiCA.loss` (views, forward, eq. 7, backward, SGD) against the number of views, as ratios to the one-RGB-crop step
measured in the same run.

RGB crops each cost a pass of the video trunk, so their step grows about linearly with their number; feature crops
(eq. 5) are indexes into the two trunk maps, so adding 2 x 9 of them to two RGB crops should cost little. Memory is
the peak of allocated memory on a GPU and the bytes saved for the backward pass on a CPU (activations).

    python benchmarks/stica_views.py                 # toy shapes (16 frames at 48 px, tiny trunk): seconds on a CPU
    python benchmarks/stica_views.py --paper         # paper shapes (30 frames at 112 px, R(2+1)D-18 + audio ResNet-9,
                                                     # the paper's crops on the 4x7x7 map): for a GPU
"""
import argparse
import torch
from avlearn.engine.config import load_config
from avlearn.papers.stica import STiCA, VIEW_SETTINGS, TOY, TOY_CROPS, view_cost_table

p = argparse.ArgumentParser()
p.add_argument('--paper', action='store_true', help='paper shapes (configs/stica_k400.yaml) instead of toy shapes')
p.add_argument('--batch', type=int, default=None, help='clips per step (default: 16 toy, 8 paper as in the paper)')
p.add_argument('--steps', type=int, default=3, help='timed steps per setting (the median is reported)')
p.add_argument('--threads', type=int, default=1, help='CPU threads (1: fastest for tiny convolutions on a shared CPU)')
p.add_argument('--pooling', default='avg', help="temporal pooling: 'avg' (Table 1's default) or 'transformer'")
args = p.parse_args()
torch.set_num_threads(args.threads)
device = 'cuda' if torch.cuda.is_available() else 'cpu'

if args.paper:
    cfg = load_config('configs/stica_k400.yaml')
    base = dict(pooling=args.pooling)
    B = args.batch or 8
else:
    cfg = load_config(None, ['method=stica', f'data.fps={TOY["fps"]}', f'model.proj_dim={TOY["proj_dim"]}',
                             f'model.video_args={{width: {TOY["width"]}}}', f'model.audio_args={{width: {TOY["width"]}}}'])
    base = dict(TOY_CROPS, pooling=args.pooling, small_rgb_size=round(TOY['size'] * 96 / 112), ffn_dim=0)
    B = args.batch or 16
d = cfg.data
T = int(round(d.clip_duration * d.fps))
size = d.size if args.paper else TOY['size']
g = torch.Generator().manual_seed(0)
batch = dict(video=torch.rand(B, 3, T, size, size, generator=g),
             audio=(0.3 * torch.randn(B, int(round(d.clip_duration * d.sample_rate)), generator=g)).clamp(-1, 1))


config_args = dict(cfg.method_args)


def make_method(method_args):
    cfg.method_args = {**config_args, **base, **method_args}
    return STiCA(cfg, B)


print(f"{'paper' if args.paper else 'toy'} shapes: {B} clips of {T} frames at {size} px, {device}, "
      f"{args.threads} thread(s), {args.pooling} pooling, median of {args.steps} steps")
df = view_cost_table(make_method, batch, steps=args.steps, device=device)
print(df.round(3).to_string())
feat, two, four = (df.loc[k] for k in ('2 RGB + feature crops', '2 RGB crops', '4 RGB crops'))
print(f"\nfeature crops add {feat.views - two.views:.0f} views to 2 RGB crops for x{feat.seconds / two.seconds:.2f} time "
      f"and x{feat.memory_mb / two.memory_mb:.2f} memory; 2 more RGB crops cost x{four.seconds / two.seconds:.2f} time "
      f"and x{four.memory_mb / two.memory_mb:.2f} memory (paper, GPU-hours: x{30.0 / 29.3:.2f} and x{60.0 / 29.3:.2f})")
