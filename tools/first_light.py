"""First light over several seeds, in two worlds: `make demo`'s (configs/demo.yaml: one scene) and the default toy world
(four scenes). Trains and evaluates through the engine (`train`, `evaluate_run`) exactly as `make demo` does, and
writes results/demo/first_light.json: per world and seed, the linear-probe accuracy and R@1 of the learned encoder
and of the same encoder at random initialisation. nbs/engine/16_cli.ipynb shows the table and the verdicts.

    python tools/first_light.py --seeds 5      # about 20 minutes on 2 CPU cores
"""
import argparse, hashlib, json, platform, subprocess, sys, tempfile, time
from pathlib import Path
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'configs' / 'demo.yaml'
#: the default-world variant: the same config with every scene of the toy world (the world's default) and a scene probe
WORLDS = {
    'one scene (make demo)': [],
    'default world (four scenes)': ['data.world={n_frames: 16, size: 64, fps: 16.0, sample_rate: 16000}',
                                    'eval_tasks=[action, object, colour, scene]'],
}


def config_sha() -> str:
    "What the committed results depend on: the demo config's settings (not its comments) and the worlds' overrides."
    settings = yaml.safe_load(CONFIG.read_text())
    return hashlib.sha256(json.dumps([settings, WORLDS], sort_keys=True).encode()).hexdigest()[:16]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seeds', type=int, default=3, help='seeds 0..N-1 per world (default 3)')
    ap.add_argument('--out', default=str(ROOT / 'results' / 'demo' / 'first_light.json'), help='the JSON file to write')
    ap.add_argument('--resume', action='store_true',
                    help='keep the seeds already in --out when it was made with the same config (config_sha)')
    args = ap.parse_args(argv)
    if args.seeds < 2: ap.error(f"--seeds must be at least 2 (a verdict needs seed noise), got {args.seeds}")
    sys.path.insert(0, str(ROOT))
    from avlearn.engine.trainer import train
    from avlearn.engine.evaluation import evaluate_run
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out = dict(command=f'python tools/first_light.py --seeds {args.seeds}', config='configs/demo.yaml',
               config_sha=config_sha(), commit=commit, torch=torch.__version__, python=platform.python_version(),
               threads=torch.get_num_threads(), worlds={w: dict(overrides=o, seeds={}) for w, o in WORLDS.items()})
    t0, before = time.time(), 0.
    if args.resume and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        if old.get('config_sha') == out['config_sha']:
            for w in WORLDS: out['worlds'][w]['seeds'] = old['worlds'][w]['seeds']
            before = old.get('seconds', 0.)
        else: print(f"{args.out} was made with another config: starting again")
    for world, overrides in WORLDS.items():
        for seed in range(args.seeds):
            if str(seed) in out['worlds'][world]['seeds']: continue
            with tempfile.TemporaryDirectory() as run:
                train(str(CONFIG), run, overrides=[*overrides, f'seed={seed}'], progress=False)
                res = evaluate_run(run, verbose=False)
            out['worlds'][world]['seeds'][str(seed)] = dict(learned=res['learned'], random=res['random'],
                                                            chance=res['chance'])
            out['seconds'] = round(before + time.time() - t0, 1)
            Path(args.out).write_text(json.dumps(out, indent=1) + '\n')   # written after every run
            probes = {k.split('/')[0]: (res['learned'][k], res['random'][k]) for k in res['learned'] if 'probe' in k}
            print(f"{world}, seed {seed}: " + ', '.join(f"{t} {l:.3f} vs {r:.3f}" for t, (l, r) in probes.items()),
                  flush=True)


if __name__ == '__main__':
    main()
