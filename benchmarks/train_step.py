"""Training-step throughput of the GDT model at paper shapes on synthetic tensors (seed 004 lines 784-816):
R(2+1)D-18 on 30 frames of 112x112 video and the 9-layer audio ResNet on a 40x99 log-mel image (1 s at 24 kHz).

Prints clips/s of a full training step (forward, cross-modal NCE, backward, SGD) and its ratio to a forward-only pass
measured in the same run (these machines are noisy; ratios are what to compare). On a GPU it also compares bf16
autocast, channels_last_3d and torch.compile against fp32 eager, all in the same run.

    python benchmarks/train_step.py [--batch 4] [--steps 3]
"""
import argparse, time
import torch
from avlearn.core import seed_everything
from avlearn.training import load_config, build_av_model
from avlearn.losses import cross_modal_nce

p = argparse.ArgumentParser()
p.add_argument('--batch', type=int, default=None, help='clips per step (default: 2 on CPU, 32 on GPU)')
p.add_argument('--steps', type=int, default=None, help='timed steps per variant (default: 3 on CPU, 20 on GPU)')
p.add_argument('--config', default='configs/gdt_k400.yaml')
args = p.parse_args()
cuda = torch.cuda.is_available()
dev = torch.device('cuda' if cuda else 'cpu')
B = args.batch or (32 if cuda else 2)
steps = args.steps or (20 if cuda else 3)
seed_everything(0)
try: cfg = load_config(args.config)
except Exception as e:
    print(f'(could not read {args.config}: {e}; using the GDT paper shapes directly)')
    cfg = load_config(overrides=['model.video=r2plus1d_18', 'model.audio=audio_resnet9', 'model.proj_dim=256',
                                 'data.sample_rate=24000', 'model.hop_length_ms=10.1'])
T = max(1, int(round(cfg.data.clip_duration * cfg.data.fps))) if cfg.data.kind != 'synthetic' else cfg.data.n_frames
T = T if cfg.data.fps >= 30 else 30
video = torch.rand(B, 3, T, 112, 112, device=dev)
audio = torch.randn(B, int(cfg.data.sample_rate * 1.0), device=dev).clamp(-1, 1) * 0.3


def run(model, train: bool, precision='fp32', channels_last=False) -> float:
    v = video.contiguous(memory_format=torch.channels_last_3d) if channels_last else video
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if precision == 'bf16' else (lambda: torch.autocast(dev.type, enabled=False))
    def step():
        if train:
            with ctx(): loss = cross_modal_nce(*model(v, audio), temperature=0.07)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        else:
            with torch.no_grad(), ctx(): model(v, audio)
    model.train(train)
    for _ in range(2 if not cuda else 5): step()          # warm-up (and compilation)
    if cuda: torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps): step()
    if cuda: torch.cuda.synchronize()
    return B * steps / (time.perf_counter() - t0)


def fresh(channels_last=False, compile=False):
    seed_everything(0)
    m = build_av_model(cfg).to(dev)
    if channels_last: m = m.to(memory_format=torch.channels_last_3d)
    return torch.compile(m) if compile else m


print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'} ({torch.get_num_threads()} threads); batch {B}, "
      f"video {tuple(video.shape[1:])}, audio {audio.shape[1]} samples; {steps} timed steps per variant")
fwd = run(fresh(), train=False)
trn = run(fresh(), train=True)
print(f"forward only (reference) : {fwd:8.2f} clips/s")
print(f"train step fp32 eager    : {trn:8.2f} clips/s   = {trn / fwd:.2f} x forward-only throughput")
if cuda:
    for name, kw, prec in [('bf16 autocast', {}, 'bf16'), ('bf16 + channels_last_3d', dict(channels_last=True), 'bf16'),
                           ('bf16 + torch.compile', dict(compile=True), 'bf16')]:
        r = run(fresh(**kw), train=True, precision=prec, channels_last=kw.get('channels_last', False))
        print(f"train step {name:<24}: {r:8.2f} clips/s   = {r / trn:.2f} x fp32 eager")
