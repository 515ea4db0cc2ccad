"""Training-step throughput of the GDT method at paper shapes on synthetic tensors (seed 004 lines 784-816), through
the same `Method.loss` that `avlearn-train` runs: each video of the batch is a 3 s clip at 30 fps and 112x112 with its
24 kHz audio; GDT cuts 1 s windows (30 frames; 40x99 log-mel images) at 2 time shifts x 2 modalities x 2 reversals, so
one video gives 8 transformations through R(2+1)D-18 and the 9-layer audio ResNet.

Prints videos/s (and transformations/s) of a full training step (views, forward, eq. 1, backward, SGD) and its ratio
to a forward-only pass of the same views measured in the same run (these machines are noisy; ratios are what to
compare). On a GPU it also compares bf16 autocast, channels_last_3d and torch.compile against fp32 eager.

    python benchmarks/train_step.py [--batch 2] [--steps 1] [--config configs/gdt_k400.yaml] [--json out.json]
"""
import argparse, contextlib, json, time
import torch
from avlearn.core import seed_everything
from avlearn.engine.config import load_config
from avlearn.engine.method import get_method
from avlearn.engine.trainer import to_channels_last_3d

p = argparse.ArgumentParser()
p.add_argument('--batch', type=int, default=None, help='videos per step (default: 2 on CPU, 16 on GPU)')
p.add_argument('--steps', type=int, default=None, help='timed steps per variant (default: 1 on CPU, 10 on GPU)')
p.add_argument('--config', default='configs/gdt_k400.yaml')
p.add_argument('--json', default=None, help='also write the numbers to this JSON file')
p.add_argument('--set', nargs='*', default=[], help='config overrides key.sub=value (e.g. tiny encoders for a smoke run)')
p.add_argument('--no_compile', action='store_true', help='skip the torch.compile variant')
args = p.parse_args()
cuda = torch.cuda.is_available()
dev = torch.device('cuda' if cuda else 'cpu')
B = args.batch or (16 if cuda else 2)
steps = args.steps or (10 if cuda else 1)
cfg = load_config(args.config, args.set)
d = cfg.data
T, S = int(round(d.clip_duration * d.fps)), int(round(d.clip_duration * d.sample_rate))
g = torch.Generator().manual_seed(0)
batch = dict(video=torch.rand(B, 3, T, d.size, d.size, generator=g).to(dev),
             audio=(0.3 * torch.randn(B, S, generator=g)).clamp(-1, 1).to(dev), index=torch.arange(B, device=dev))
method = get_method(cfg.method)(cfg, B)


def fresh(channels_last=False, compile=False):
    seed_everything(0)
    m = method.build_model().to(dev)
    if channels_last: m = to_channels_last_3d(m)
    return torch.compile(m) if compile else m


def run(model, train: bool, precision='fp32', channels_last=False) -> float:
    b = dict(batch, video=batch['video'].contiguous(memory_format=torch.channels_last_3d)) if channels_last else batch
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if precision == 'bf16' else contextlib.nullcontext
    def step():
        if train:
            with ctx(): loss, _ = method.loss(model, b)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        else:
            with torch.no_grad(), ctx(): method.loss(model, b)
    model.train(train)
    for _ in range(1 if not cuda else 3): step()          # warm-up (and compilation)
    if cuda: torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps): step()
    if cuda: torch.cuda.synchronize()
    return B * steps / (time.perf_counter() - t0)


views = 2 * 2 * 2 if cfg.method == 'gdt' else 1
print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'} ({torch.get_num_threads()} threads); method {cfg.method}; "
      f"{B} videos of {tuple(batch['video'].shape[1:])} with {S} audio samples per step ({views} transformations each); "
      f"{steps} timed step(s) per variant")
fwd = run(fresh(), train=False)
trn = run(fresh(), train=True)
print(f"forward only, no grad (reference): {fwd:8.3f} videos/s ({fwd * views:8.2f} transformations/s)")
print(f"train step fp32 eager            : {trn:8.3f} videos/s ({trn * views:8.2f} transformations/s) = {trn / fwd:.2f} x forward-only")
out = dict(device=torch.cuda.get_device_name() if cuda else 'cpu', method=cfg.method, batch=B, steps=steps,
           video_shape=list(batch['video'].shape[1:]), videos_per_s=dict(forward_only=fwd, fp32=trn))
if cuda:
    variants = [('bf16 autocast', {}, 'bf16'), ('bf16 + channels_last_3d', dict(channels_last=True), 'bf16')]
    if not args.no_compile: variants.append(('bf16 + torch.compile', dict(compile=True), 'bf16'))
    for name, kw, prec in variants:
        r = run(fresh(**kw), train=True, precision=prec, channels_last=kw.get('channels_last', False))
        out['videos_per_s'][name] = r
        print(f"train step {name:<22}: {r:8.3f} videos/s = {r / trn:.2f} x fp32 eager")
if args.json: open(args.json, 'w').write(json.dumps(out, indent=1))
