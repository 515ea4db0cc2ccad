"""SeLaVi in the training engine, for real: the full-scale config loads and builds, `avlearn-train` runs method selavi on
a tiny toy world to the end and resumes mid-epoch with its label table, and the labels of a 2-process gloo run (the
distributed Sinkhorn over unequal shards) equal those of a 1-process run. All on CPU."""
import itertools, json, os, socket, subprocess, sys
from pathlib import Path
import pytest
import torch
from avlearn.dist import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0', MPLBACKEND='Agg')
# 63 toy clips: the 2-process shards (31 + 32) differ in size. cluster_batch_size 1: every clip is encoded alone, so the
# logits cannot depend on how the shards are batched; float64 Sinkhorn so that 1 and 2 processes take the same decisions.
TINY = ['data.n_train=63', 'data.n_test=16', 'data.world={n_frames: 8, size: 32}', 'data.cache=false',
        'model.video_args={width: 4, out_dim: 16, norm: group}', 'model.audio_args={width: 4, out_dim: 16, norm: group}',
        'optim.warmup_epochs=0', 'optim.schedule=constant', 'epochs=3', 'max_steps=0', 'deterministic=true', 'keep_last=100',
        'method=selavi', 'method_args={K: 4, n_heads: 2, head_hidden: 16, n_clusterings: 3, greedy_swaps: 500, '
        'sinkhorn_dtype: float64, cluster_batch_size: 1}']


def _train_cmd(out, *extra, launcher=()):
    return [*launcher, str(BIN / 'avlearn-train'), '--config', str(ROOT / 'configs' / 'demo.yaml'), '--out', str(out),
            '--no_progress', '--set', *TINY, *extra]


def _ckpts(out):
    from avlearn.engine.checkpoints import list_checkpoints, load_checkpoint
    return [load_checkpoint(p) for p in list_checkpoints(out)]


def _records(out):
    return [json.loads(l) for l in (Path(out) / 'metrics.jsonl').read_text().splitlines() if l.strip()]


def test_full_scale_config_loads_and_builds():
    "The config is in the TrainConfig schema, its method_args are SeLaVi's, and the model it describes builds (the real-shape"
    " forward is tests/test_training.py::test_full_scale_config_dry_run[selavi_vggsound], marked slow)."
    from avlearn.engine.config import load_config
    from avlearn.engine.trainer import dry_run_config
    from avlearn.engine.method import get_method
    from avlearn.engine.data import build_datasets
    cfg = load_config(ROOT / 'configs' / 'selavi_vggsound.yaml')
    a = cfg.method_args
    assert cfg.method == 'selavi' and (a['K'], a['n_heads'], a['n_clusterings'], a['lam']) == (309, 10, 100, 20.0)
    assert (cfg.model.video, cfg.model.audio, cfg.data.size, round(cfg.data.clip_duration * cfg.data.fps)) == ('r2plus1d_18', 'audio_resnet9', 112, 30)
    assert a['prior'] == 'gaussian' and a['decorrelated_heads'] is True
    dry = dry_run_config(cfg)
    method = get_method(dry.method)(dry, len(build_datasets(dry)[0]))
    assert method.schedule[0] == 0 and method.priors.shape == (10, 309) and method.labels.shape == (10, 4)
    assert torch.allclose(method.priors.sum(1), torch.ones(10))
    model = method.build_model()
    assert len(model.heads['video']) == len(model.heads['audio']) == 10
    assert all(h[-1].out_features == 309 for m in ('video', 'audio') for h in model.heads[m])
    assert not hasattr(model, 'video_head')                      # the AVModel's projection heads are not trained by SeLaVi
    full = get_method(cfg.method)(cfg, 1000)                     # the real schedule: 100 clusterings mapped to epochs
    assert full.schedule[0] == 0 and full.schedule == sorted(set(full.schedule)) and max(full.schedule) < cfg.epochs


def test_bad_method_args_errors():
    from avlearn.engine.config import load_config
    from avlearn.engine.method import get_method
    M = get_method('selavi')
    for over, word in [('method_args={Kk: 3}', r'unknown key\(s\)'), ('method_args={K: 1}', 'method_args.K'),
                       ("method_args={prior: zipf}", 'method_args.prior'), ("method_args={align: best}", 'method_args.align'),
                       ('method_args={n_heads: 1}', 'decorrelated_heads'), ('method_args={lam: 0}', 'method_args.lam'),
                       ('method_args={greedy_restarts: 0}', 'method_args.greedy_restarts'),
                       ('method_args={fusion: sum}', 'method_args.fusion'),
                       ('method_args={sinkhorn_labels: sizes}', 'method_args.sinkhorn_labels')]:
        with pytest.raises(ValueError, match=word): M(load_config(overrides=['method=selavi', over]), 10)
    with pytest.raises(ValueError, match='decorrelated_heads'):
        M(load_config(overrides=['method=selavi', 'method_args={decorrelated_heads: 1}']), 10)


@pytest.fixture(scope='module')
def run_to_step5(tmp_path_factory):
    "1 process, batch 16 (3 steps per epoch), stopped at step 5: mid-epoch 1, after the clusterings of epochs 0 and 1."
    out = tmp_path_factory.mktemp('selavi') / 'run'
    r = subprocess.run(_train_cmd(out, 'data.batch_size=16', 'checkpoint_every=2', 'max_steps=5'), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    return out, r.stdout


def test_train_with_label_table_then_resume_to_the_end(run_to_step5):
    "The run writes its label table into every checkpoint; resumed mid-epoch it gets the table back and re-clusters nothing."
    out, stdout = run_to_step5
    assert 'clustering 1 (epoch 0)' in stdout and 'clustering 2 (epoch 1)' in stdout and 'aligned audio to video' in stdout
    first = _ckpts(out)
    st = first[-1]
    assert st['step'] == 5 and st['epoch'] == 1 and st['batch_in_epoch'] == 2
    m = st['method']
    assert m['labels'].shape == (2, 63) and (m['labels'] >= 0).all() and m['labels'].max() < 4
    assert m['clustered_epochs'] == [0, 1] and m['aligned'] and m['priors'].shape == (2, 4)
    assert not torch.equal(first[0]['method']['labels'], m['labels'])            # epoch 1 re-labelled with the trained model
    r2 = subprocess.run(_train_cmd(out, 'data.batch_size=16', 'checkpoint_every=2'), env=ENV, capture_output=True, text=True)
    assert r2.returncode == 0, r2.stdout + r2.stderr[-3000:]
    assert 'resumed from' in r2.stdout and 'clustering' not in r2.stdout and 'finished at step 9/9' in r2.stdout
    end = _ckpts(out)[-1]
    assert end['step'] == 9 and end['epoch'] == 3
    assert torch.equal(end['method']['labels'], m['labels']) and end['method']['clustered_epochs'] == [0, 1]
    losses = [x for x in _records(out) if 'loss' in x]
    assert sorted({x['step'] for x in losses}) == list(range(1, 10)) and all(x['loss'] > 0 and 'ce_audio' in x for x in losses)
    clus = [x for x in _records(out) if 'clustering' in x]
    assert [x['epoch'] for x in clus] == [0, 1] and all(x['sinkhorn_converged'] and x['labelled'] == 63 for x in clus)


def test_two_process_labels_equal_one_process(run_to_step5, tmp_path):
    "The first label table of a 2-process gloo run (shards of 31 and 32 clips) equals the 1-process one."
    from avlearn.engine.checkpoints import load_checkpoint
    one, two = run_to_step5[0], tmp_path / 'two'
    r2 = subprocess.run(_train_cmd(two, 'data.batch_size=8', 'max_steps=1',
                                   launcher=(str(BIN / 'torchrun'), '--nproc_per_node=2', f'--master_port={free_port()}')),
                        env=ENV, capture_output=True, text=True)
    assert r2.returncode == 0, r2.stdout + r2.stderr[-3000:]
    a, b = load_checkpoint(one / 'ckpt_000000002.pt'), _ckpts(two)[-1]        # both hold the labels of epoch 0
    assert b['world_size'] == 2 and a['method']['clustered_epochs'] == b['method']['clustered_epochs'] == [0]
    assert torch.equal(a['method']['priors'], b['method']['priors'])
    la, lb = a['method']['labels'], b['method']['labels']
    assert (la >= 0).all() and (lb >= 0).all()
    assert torch.equal(la, lb), (la != lb).sum()
    ra, rb = (next(x for x in _records(o) if 'clustering' in x) for o in (one, two))
    assert ra['sinkhorn_iter'] == rb['sinkhorn_iter'] and abs(ra['sinkhorn_error'] - rb['sinkhorn_error']) < 1e-9


def _problem():
    g = torch.Generator().manual_seed(0)
    logp = (torch.randn(3, 101, 7, generator=g) * 2).log_softmax(-1)     # 3 heads, N = 101 items, K = 7
    order = torch.randperm(101, generator=g)                             # the items' dataset positions, shuffled
    priors = torch.stack([torch.rand(7, generator=g) + 0.5 for _ in range(3)])
    return logp, order, priors / priors.sum(1, keepdim=True)


BOUNDS = {'50+51': [(0, 50), (50, 101)], '0+101': [(0, 0), (0, 101)]}     # unequal shards, one of them empty


def _worker(rank, world, out):
    if True:
        from avlearn.papers.selavi import cluster_shards
        logp, order, priors = _problem()
        for (name, bounds), labels in itertools.product(BOUNDS.items(), ('argmax', 'prior')):
            lo, hi = bounds[rank]
            table, res = cluster_shards(logp[:, lo:hi], order[lo:hi], 101, lam=20., priors=priors, tol=1e-8,
                                        dtype=torch.float64, group='world', labels=labels)
            torch.save(dict(table=table, n_iter=res.n_iter, error=res.error, converged=res.converged),
                       f'{out}/{name}_{labels}_rank{rank}.pt')


def test_cluster_shards_two_gloo_processes(tmp_path, gloo):
    "cluster_shards on 2 gloo processes with shuffled dataset positions, N = 101 split 50 + 51 and 0 + 101, equals 1 process."
    from avlearn.papers.selavi import cluster_shards
    # fork: the children reuse this process's imports (a spawned child would import torch and avlearn again)
    gloo(_worker, 2, str(tmp_path), start_method='fork')
    logp, order, priors = _problem()
    for labels in ('argmax', 'prior'):
        ref, rres = cluster_shards(logp, order, 101, lam=20., priors=priors, tol=1e-8, dtype=torch.float64,
                                   labels=labels)
        assert (ref >= 0).all() and rres.converged
        if labels == 'prior':                           # the prior's sizes exactly, on one process as on two
            from avlearn.sinkhorn import prior_counts
            sizes = torch.stack([torch.bincount(h, minlength=7) for h in ref])
            assert torch.equal(sizes, prior_counts(rres.prior, 101))
        for name in BOUNDS:
            for r in range(2):                          # every process holds the whole table, equal to one process's
                p = torch.load(tmp_path / f'{name}_{labels}_rank{r}.pt')
                assert torch.equal(p['table'], ref), (name, labels)
                assert p['converged'] and p['n_iter'] == rres.n_iter and abs(p['error'] - rres.error) < 1e-12
    with pytest.raises(ValueError, match='more than once'):
        cluster_shards(logp[:, :2], torch.tensor([5, 5]), 101)
    with pytest.raises(ValueError, match='index must hold'):
        cluster_shards(logp[:, :2], torch.tensor([5, 101]), 101)


@pytest.mark.parametrize('fusion', ['splice', 'concat', 'video'])
def test_table3_fusions_train_through_the_engine(fusion):
    "Each fusion of Table 3 (spliced heads, heads on concatenated features, video only) trains in-process and labels."
    from avlearn.engine.method import train_in_process
    from avlearn.papers.selavi import mini_dataset, mini_overrides
    data = mini_dataset(n=32, seed=0)
    args = dict(K=4, n_heads=2, head_hidden=8, n_clusterings=2, align='hungarian', fusion=fusion)
    tr = train_in_process(None, mini_overrides('selavi', 0, 2, args, batch_size=16), train_set=data)
    assert tr.status == 'finished' and tr.method.clustered_epochs == [0]
    assert tr.method.aligned and tr.method.find_unused_parameters == (fusion == 'video')
    labels = tr.method.final_labels(tr.model, tr.train_set)
    assert labels.shape == (2, 32) and (labels >= 0).all() and labels.max() < 4
    assert set(tr.model(data['video'][:4], data['audio'][:4])) == {'splice': {'video', 'audio'}, 'concat': {'concat'},
                                                                   'video': {'video'}}[fusion]


def test_claims_compare_rows_of_the_same_seed(monkeypatch):
    "A claim's value is its row's NMI minus its reference row's, for the seed and budget asked for."
    import avlearn.papers.selavi as s
    from avlearn.engine.method import claims_of
    fake = {('g', 1, 'fast'): 30., ('contrastive', 1, 'fast'): 5., ('random', 1, 'fast'): 20.}
    monkeypatch.setattr(s, 'mini_row', lambda row, seed, budget: {s.MINI_LABEL: fake[(row, seed, budget)]})
    claims = {c.name: c for c in claims_of('selavi')}
    assert claims['table2_selavi_vs_contrastive_kmeans'].run(1, 'fast') == dict(value=25., ours=30., reference=5.)
    assert claims['table2_selavi_vs_random_kmeans'].run(1, 'fast')['value'] == 10.
    assert {c.config['row'] for c in claims.values()} <= set(s.TABLE3_ROWS) and len(claims) == 8
    assert claims['prior_sized_labels_help'].config['row'] == 'h' and s.TABLE3_ROWS['h'] == dict(sinkhorn_labels='prior')
