"""Multi-modal deep clustering (seed 003) beyond the notebook: the losses moved here from avlearn.losses against loops,
bad inputs (more clusters than samples, fewer samples than the PCA dimension, narrations with no known word, all samples
in one cluster), every variant through the engine on tiny data, the per-epoch head reset, state round trip, and the
full-scale configs at real shapes (meta device; a real dry run). All on CPU."""
import json, math, os, subprocess, sys
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from avlearn.papers.deep_cluster import (pca_whiten, kmeans, fill_empty_clusters, cluster_weights,
                                         uniform_cluster_sample, cluster_triplet_loss, cluster_negatives,
                                         build_vocabulary, narration_ids,
                                         BowTextEncoder, SegmentEncoder, segment_labels, DeepClusterMethod,
                                         DeepClusterModel, mini_overrides, mini_dataset, split, ROWS)
from avlearn.engine.method import claims_of
claims_of_paper = lambda: claims_of("deep_cluster")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
D64 = torch.float64


# ---- the losses moved from avlearn.losses ------------------------------------------------------------------------
def test_cluster_triplet_loss_matches_loop():
    g = torch.Generator().manual_seed(0)
    a, p, nn = (torch.randn(4, 3, generator=g, dtype=D64) for _ in range(3))
    ref = sum(max(0., float((a[i] - p[i]).pow(2).sum() - (a[i] - nn[i]).pow(2).sum()) + 1.5) for i in range(4)) / 4
    logits, y = torch.randn(4, 3, generator=g, dtype=D64), torch.tensor([0, 2, 1, 1])
    assert cluster_triplet_loss(logits, y, a, p, nn, 0.3, 1.5).item() == pytest.approx(
        0.3 * F.cross_entropy(logits, y).item() + 0.7 * ref, abs=1e-12)
    w = torch.tensor([1., 2., 0.5], dtype=D64)
    ce_w = sum(-w[y[i]] * torch.log_softmax(logits[i], 0)[y[i]] for i in range(4)) / sum(w[y[i]] for i in range(4))
    assert cluster_triplet_loss(logits, y, a, p, nn, 0.3, 1.5, weight=w).item() == pytest.approx(
        0.3 * float(ce_w) + 0.7 * ref, abs=1e-12)


def test_cluster_negatives_always_from_another_cluster():
    cl = torch.tensor([0, 0, 0, 1, 2, 2])
    for s in range(20):
        n = cluster_negatives(cl, torch.Generator().manual_seed(s))
        assert (cl[n] != cl).all()


@pytest.mark.parametrize('bad,word', [
    (torch.zeros(0, dtype=torch.long), 'must not be empty'),            # was an OPEN strict xfail in test_bad_inputs
    (torch.tensor([0., 1.5]), 'clusters'), (torch.tensor([[0, 1]]), 'clusters'),
    (torch.zeros(4, dtype=torch.long), 'two distinct clusters')])      # all samples in one cluster
def test_cluster_negatives_bad_inputs(bad, word):
    with pytest.raises((ValueError, TypeError), match=word): cluster_negatives(bad)


def test_cluster_triplet_loss_bad_inputs():
    q = torch.randn(2, 4)
    with pytest.raises(ValueError, match='pseudolabels'):
        cluster_triplet_loss(torch.randn(2, 3), torch.tensor([0, 3]), q, q, q)
    with pytest.raises((ValueError, TypeError), match='weight'):
        cluster_triplet_loss(torch.randn(2, 3), torch.tensor([0, 1]), q, q, q, weight=torch.ones(2))
    with pytest.raises(ValueError, match='alpha'):
        cluster_triplet_loss(torch.randn(2, 3), torch.tensor([0, 1]), q, q, q, alpha=2.)


# ---- pseudo-labels and their bad inputs ------------------------------------------------------------------------------
def test_more_clusters_than_samples():
    with pytest.raises(ValueError, match='K=5 clusters is more than the 4 samples'): kmeans(torch.randn(4, 3), 5)
    with pytest.raises(ValueError, match='K must be <= samples'):
        fill_empty_clusters(torch.zeros(3, dtype=torch.long), 4, torch.randn(3, 2))


def test_fewer_samples_than_pca_dimension():
    with pytest.raises(ValueError, match='needs at least 256 samples'): pca_whiten(torch.randn(100, 512), 256)
    with pytest.raises(ValueError, match='pca_dim'): pca_whiten(torch.randn(100, 8), 0)
    with pytest.raises(ValueError, match='x'): pca_whiten(torch.tensor([[float('nan'), 1.]] * 3), 1)


def test_all_samples_in_one_cluster_is_defined():
    x = torch.ones(12, 3)                                           # identical points: k-means finds one cluster
    lab = kmeans(x, 4, seed=1)
    assert sorted(torch.bincount(lab, minlength=4).tolist()) == [3, 3, 3, 3]
    assert cluster_weights(torch.zeros(6, dtype=torch.long), 3).tolist() == [1., 0., 0.]
    s = uniform_cluster_sample(torch.zeros(6, dtype=torch.long), 10, torch.Generator().manual_seed(0))
    assert len(s) == 10 and s.max() < 6


def test_kmeans_backends():
    x = torch.cat([torch.randn(20, 2) * 0.05, torch.randn(20, 2) * 0.05 + 3])
    assert len(set(kmeans(x, 2)[:20].tolist())) == 1
    with pytest.raises(ValueError, match='backend'): kmeans(x, 2, backend='cuml')
    import importlib.util
    if importlib.util.find_spec('faiss') is None:
        with pytest.raises(ImportError, match='faiss-cpu'): kmeans(x, 2, backend='faiss')
    else: assert len(set(kmeans(x, 2, backend='faiss')[:20].tolist())) == 1


def test_uniform_sampler_matches_weights():
    lab = torch.tensor([0] * 50 + [1] * 10 + [3] * 4)
    s = uniform_cluster_sample(lab, 6000, torch.Generator().manual_seed(0))
    w = cluster_weights(lab, 4)
    # the sampler's count of a cluster over N draws equals the weight mass of that cluster (N / K' each)
    freq = torch.bincount(lab[s], minlength=4).float() / 6000
    assert torch.allclose(freq, torch.bincount(lab, minlength=4) * w / len(lab), atol=1e-3)
    with pytest.raises(ValueError, match='empty'): uniform_cluster_sample(torch.zeros(0, dtype=torch.long), 3)


def test_narrations_with_no_known_word():
    v = build_vocabulary(['a red ball', 'a blue box'])
    ids = narration_ids(v, ['um uh', '', 'red'])
    assert ids[0].sum() == 0 and ids[1].sum() == 0 and ids[2].sum() > 0
    enc = BowTextEncoder(len(v), 8, 4).eval()
    out = enc(ids)
    assert torch.isfinite(out).all() and torch.allclose(out[0], out[1])      # both zero bags: the same defined output
    with pytest.raises(ValueError, match='no word'): build_vocabulary(['', '!!'])
    with pytest.raises(TypeError, match='list of strings'): narration_ids(v, 'a red ball')


def test_segments():
    enc = SegmentEncoder(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3)), 8)
    assert enc(torch.rand(2, 3, 64, 2, 2)).shape == (2, 3)
    assert enc.segments(torch.rand(2, 3, 64, 2, 2)).shape == (2, 8, 3)
    with pytest.raises(ValueError, match='n_segments=8'): enc(torch.rand(2, 3, 60, 2, 2))
    assert segment_labels(torch.arange(16).reshape(1, 16) // 4, 4).tolist() == [[0, 1, 2, 3]]


# ---- the method through the engine ----------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny():
    return split(mini_dataset(80, seed=3), 64)


def _train(row, data, epochs=2, **kw):
    from avlearn.engine.method import train_in_process
    ov = mini_overrides(row, 0, epochs, optim=dict(batch_size=16), pca_dim=8, K=6, **kw)
    return train_in_process(None, ov, train_set=data)


@pytest.mark.parametrize('row', sorted(set(ROWS) - {'random'}))
def test_every_row_trains_and_relabels(row, tiny):
    tr = _train(row, tiny[0])
    m = tr.method
    if row == 'supervised':
        assert m.history == []
        return
    assert len(m.history) == 2 and all(h['seconds'] >= 0 for h in m.history)
    for s in m.sets:
        assert (m.labels[s] >= 0).all() and torch.bincount(m.labels[s], minlength=6).min() > 0
        assert 0 <= m.history[-1][f'{s}/nmi'] <= 1
    assert len(tr.optimizer.param_groups) == 2
    head_ids = {id(p) for p in tr.model.heads.parameters()}
    assert {id(p) for p in tr.optimizer.param_groups[1]['params']} == head_ids


def test_features_of_text_only_row_are_text(tiny):
    tr = _train('smd_text', tiny[0], epochs=1)
    b = {k: v[:4] for k, v in tiny[1].items()}; b['index'] = torch.arange(4)
    assert tr.method.features(tr.model, b).shape == (4, 32)
    assert tr.method.vocab is not None and 'ball' in tr.method.vocab


def test_state_round_trip(tiny):
    tr = _train('xcc', tiny[0], epochs=1)
    from avlearn.engine.config import load_config
    m2 = DeepClusterMethod(tr.cfg, 64)
    m2.load_state_dict(tr.method.state_dict())
    assert all(torch.equal(m2.labels[s], tr.method.labels[s]) for s in tr.method.sets)
    assert m2.vocab.itos == tr.method.vocab.itos
    with pytest.raises(ValueError, match='does not fit'):
        DeepClusterMethod(tr.cfg, 10).load_state_dict(tr.method.state_dict())


def test_small_sets_are_capped_loudly(tiny, capsys):
    data = {k: v[:5] for k, v in tiny[0].items()}
    from avlearn.engine.method import train_in_process
    ov = mini_overrides('xdc', 0, 1, optim=dict(batch_size=4)) + ['log_every=1']
    tr = train_in_process(None, ov, train_set=data)
    h = tr.method.history[0]
    assert (h['video/K_used'], h['video/pca_used']) == (5, 5)       # K=24 and pca_dim=16 > 5 clips


def test_bad_method_args():
    from avlearn.engine.config import load_config
    for over, word in [('method_args={variant: sdc}', 'method_args.variant'), ('method_args={K: 1}', 'method_args.K'),
                       ('method_args={pair: video}', 'method_args.pair'), ('method_args={joint_dim: 5}', 'joint_dim'),
                       ('method_args={alpha: 1.5}', 'alpha'), ('method_args={backend: gpu}', 'backend'),
                       ('method_args={Kk: 3}', r'unknown key\(s\)')]:
        with pytest.raises(ValueError, match=word):
            DeepClusterMethod(load_config(overrides=['method=deep_cluster', over]), 10)


def test_loss_before_clustering_is_an_error(tiny):
    from avlearn.engine.config import load_config
    cfg = load_config(overrides=mini_overrides('smd', 0, 1))
    m = DeepClusterMethod(cfg, 64); model = m.build_model()
    b = {k: v[:4] for k, v in tiny[0].items()}; b['index'] = torch.arange(4)
    with pytest.raises(RuntimeError, match='on_epoch_start'): m.loss(model, b)


def test_avlearn_train_on_the_toy_world_with_narrations_and_resume(tmp_path):
    "The CLI on the engine's own toy data (narrations as strings through the DataLoader), stopped mid-run and resumed."
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0', MPLBACKEND='Agg')
    cmd = [str(BIN / 'avlearn-train'), '--config', str(ROOT / 'configs' / 'demo.yaml'), '--out', str(tmp_path / 'run'),
           '--no_progress', '--set', 'data.n_train=32', 'data.n_test=16', 'data.cache=false',
           'data.world={n_frames: 16, size: 32, compound: true}', 'data.batch_size=8', 'epochs=2',
           'checkpoint_every=2', 'method=deep_cluster', 'method_args={variant: xcc, K: 4, pca_dim: 8, n_segments: 2}',
           'model.video_args={width: 4, out_dim: 16}', 'model.audio_args={width: 4, out_dim: 16}']
    r = subprocess.run(cmd + ['max_steps=6'], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.count('pseudo-labels (xcc)') == 2, r.stdout + r.stderr[-3000:]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    ok = r.returncode == 0 and 'resumed' in r.stdout and 'finished at step 8/8' in r.stdout
    assert ok, r.stdout + r.stderr[-3000:]
    assert 'pseudo-labels' not in r.stdout          # resumed mid-epoch 1: its labels come from the checkpoint


# ---- full scale ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['deep_cluster_howto100m', 'deep_cluster_coin'])
def test_config_at_real_shapes_on_meta(name):
    from avlearn.engine.config import load_config
    cfg = load_config(ROOT / 'configs' / f'{name}.yaml')
    a = cfg.method_args
    assert (a['n_segments'], a['vocab_size'], a['pca_dim']) == (8, 300, 256)
    assert round(cfg.data.clip_duration * cfg.data.fps) == 64 and cfg.data.size == 112
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ('sgd', 0.1, 0.9, 1e-4)
    m = DeepClusterMethod(cfg, 2000)
    model = m.build_model().to('meta')
    out = model(video=torch.zeros(2, 3, 64, 112, 112, device='meta'),
                text=torch.ones(2, 30, dtype=torch.long, device='meta'))
    assert out['logits']['video'].shape == (2, a['K']) and out['logits']['text'].shape == (2, a['K'])
    assert model.segment_features(torch.zeros(2, 3, 64, 112, 112, device='meta')).shape == (2, 8, 512)


@pytest.mark.slow
def test_dry_run_howto100m_config(tmp_path):
    "The real shapes end to end: 2 steps of 2 synthetic 64-frame 112 px clips (no narrations: empty bags, warned)."
    r = subprocess.run([str(BIN / 'avlearn-train'), '--config', str(ROOT / 'configs' / 'deep_cluster_howto100m.yaml'),
                        '--out', str(tmp_path), '--dry_run', '--no_progress'],
                       env=dict(os.environ, OMP_NUM_THREADS='2'), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and 'finished at step 2/2' in r.stdout, r.stdout + r.stderr[-3000:]
    assert "no 'narration'" in r.stdout and 'clustering into K=4' in r.stdout


def test_random_row_is_untrained(monkeypatch):
    import avlearn.papers.deep_cluster as dc
    monkeypatch.setitem(dc.BUDGETS, 'fast', dict(n_train=32, n_test=16, epochs=1))
    r = dc.mini_run('random', seed=0, budget='fast')
    assert r['history'] == [] and 0 <= r['activity'] <= 100 and not hasattr(r['trainer'], 'optimizer')


def test_claims_registered():
    names = [c.name for c in claims_of_paper()]
    assert {'table3_xdc_beats_smd', 'table3_xcc_beats_smd', 'table3_supervised_upper_bound',
            'table2_bow_text_beats_video', 'table2_video_signal_lowers_text', 'nmi_text_vs_video_clusters',
            'xdc_beats_random_encoder'} <= set(names)
