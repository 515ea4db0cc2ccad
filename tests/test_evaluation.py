"avlearn.evaluation against scikit-learn / scipy / brute force, the split readers on files in the official formats, bad input."
import itertools, math
import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from avlearn.evaluation import (linear_probe, finetune, retrieval_recall_at_k, few_shot_knn, clustering_metrics,
                                text_video_retrieval, knapsack, summarise, summary_f_score, read_ucf101_split,
                                read_hmdb51_split, write_manifest, average_clips)


@pytest.mark.parametrize('k_clusters,n_classes,seed', [(4, 4, 0), (7, 3, 1), (2, 5, 2), (1, 3, 3), (6, 6, 4)])
def test_clustering_metrics_match_sklearn_and_bruteforce(k_clusters, n_classes, seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, n_classes, 300)
    pred = np.where(rng.random(300) < 0.6, true % k_clusters, rng.integers(0, k_clusters, 300)) + 10  # arbitrary ids
    m = clustering_metrics(pred, true)
    assert m['nmi'] == pytest.approx(skm.normalized_mutual_info_score(true, pred), abs=1e-10)
    assert m['ari'] == pytest.approx(skm.adjusted_rand_score(true, pred), abs=1e-10)
    # Hungarian accuracy = best one-to-one cluster -> class map, by brute force over injections
    cont = skm.cluster.contingency_matrix(pred, true)
    K, C = cont.shape
    if K <= C: best = max(sum(cont[i, p[i]] for i in range(K)) for p in itertools.permutations(range(C), K))
    else: best = max(sum(cont[p[j], j] for j in range(C)) for p in itertools.permutations(range(K), C))
    assert m['accuracy'] == pytest.approx(best / 300)
    cond = cont / cont.sum(1, keepdims=True)
    ent = np.mean([-(r[r > 0] * np.log(r[r > 0])).sum() for r in cond])
    assert m['entropy'] == pytest.approx(ent) and m['purity'] == pytest.approx(cond.max(1).mean())


def test_clustering_metrics_edge_cases_and_errors():
    one = clustering_metrics(np.zeros(5, int), np.zeros(5, int))
    assert one['nmi'] == skm.normalized_mutual_info_score(np.zeros(5), np.zeros(5)) == 1.0
    assert one['ari'] == skm.adjusted_rand_score(np.zeros(5), np.zeros(5))
    assert clustering_metrics(torch.tensor([0, 1, 1]), torch.tensor([1, 0, 0]))['accuracy'] == 1.0
    for args, msg in [((np.zeros(3, int), np.zeros(4, int)), 'lengths must match'), ((np.array([], int), np.array([], int)), 'empty'),
                      ((np.zeros(3), np.zeros(3, int)), 'integer labels'), ((np.zeros((2, 2), int), np.zeros(4, int)), '1-d')]:
        with pytest.raises((ValueError, TypeError), match=msg): clustering_metrics(*args)


def _blobs(seed=0, n=60, clips=None, d=8, c=3, spread=1.0):
    centres = torch.randn(c, d, generator=torch.Generator().manual_seed(99)) * 2  # same classes in every set
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    shape = (n, d) if clips is None else (n, clips, d)
    x = (centres[y] if clips is None else centres[y][:, None]) + spread * torch.randn(*shape, generator=g)
    return x, y


def test_linear_probe_agrees_with_sklearn_logistic_regression():
    # Adam's weight_decay wd on the mean loss is sklearn's L2 penalty with C = 1 / (wd * N) (up to the bias, which we decay)
    xtr, ytr = _blobs(0, 120, spread=2.0); xte, yte = _blobs(1, 90, spread=2.0)
    ours = linear_probe(xtr, ytr, xte, yte, epochs=800, weight_decay=0.01)
    mu, sd = xtr.mean(0), xtr.std(0, unbiased=False)
    sk = LogisticRegression(C=1 / (0.01 * 120), max_iter=5000).fit(((xtr - mu) / sd).numpy(), ytr.numpy())
    p = sk.predict_proba(((xte - mu) / sd).numpy())
    assert (p.argmax(1) == ours['probs'].argmax(1).numpy()).mean() >= 0.97
    assert np.abs(p - ours['probs'].numpy()).max() < 0.15
    assert abs(ours['accuracy'] - (p.argmax(1) == yte.numpy()).mean()) <= 0.03


def test_clip_averaging_is_mean_softmax():
    xtr, ytr = _blobs(0, 60, clips=4, spread=2.5); xte, yte = _blobs(1, 30, clips=4, spread=2.5)
    r = linear_probe(xtr, ytr, xte, yte)
    assert r['probs'].shape == (30, 3) and torch.allclose(r['probs'].sum(1), torch.ones(30))
    assert r['accuracy'] == pytest.approx((r['probs'].argmax(1) == yte).float().mean().item())
    assert r['accuracy'] >= r['clip_accuracy']
    assert torch.allclose(average_clips(xte), xte.mean(1))


def test_finetune_trains_a_copy_and_averages_clips():
    xtr, ytr = _blobs(0, 90); xte, yte = _blobs(1, 30, clips=3)
    enc = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU())
    w = enc[0].weight.clone()
    r = finetune(enc, xtr, ytr, xte, yte, epochs=8, lr=1e-2)
    assert r['accuracy'] > 0.8 and torch.equal(enc[0].weight, w) and not torch.equal(r['model'][0][0].weight, w)
    with pytest.raises(ValueError, match='test_x must be'): finetune(enc, xtr, ytr, xte[..., :4], yte)
    with pytest.raises(TypeError, match='encoder'): finetune(lambda x: x, xtr, ytr, xte, yte)


def test_retrieval_matches_loop():
    q, qy = _blobs(2, 20, spread=3.); gx, gy = _blobs(3, 40, spread=3.)
    r = retrieval_recall_at_k(q, qy, gx, gy, ks=(1, 5, 20))
    qn, gn = q / q.norm(dim=1, keepdim=True), gx / gx.norm(dim=1, keepdim=True)
    for k in (1, 5, 20):
        hits = [int(qy[i]) in [int(gy[j]) for j in sorted(range(40), key=lambda j: -float(qn[i] @ gn[j]))[:k]] for i in range(20)]
        assert r[f'R@{k}'] == pytest.approx(np.mean(hits))


def test_few_shot_knn_matches_loop_with_all_shots():
    xtr, ytr = _blobs(0, 30, spread=2.); xte, yte = _blobs(1, 15, spread=2.)
    r = few_shot_knn(xtr, ytr, xte, yte, n_per_class=10, n_trials=2)  # 10 per class = all of them: deterministic
    nn = [int(ytr[max(range(30), key=lambda j: float(torch.nn.functional.cosine_similarity(xte[i], xtr[j], 0)))]) for i in range(15)]
    assert r['accuracy'] == pytest.approx(np.mean(np.array(nn) == yte.numpy())) and r['std'] == 0


def test_text_video_retrieval_matches_loop():
    g = torch.Generator().manual_seed(0)
    t, v = torch.randn(30, 6, generator=g), torch.randn(30, 6, generator=g)
    r = text_video_retrieval(t + 0.0, 0.7 * t + v)
    tn, vn = torch.nn.functional.normalize(t, dim=1), torch.nn.functional.normalize(0.7 * t + v, dim=1)
    s = tn @ vn.t()
    ranks = [1 + sum(float(s[i, j]) > float(s[i, i]) for j in range(30)) for i in range(30)]
    assert r['t2v']['MdR'] == pytest.approx(np.median(ranks)) and r['t2v']['MnR'] == pytest.approx(np.mean(ranks))
    for k in (1, 5, 10): assert r['t2v'][f'R@{k}'] == pytest.approx(np.mean(np.array(ranks) <= k))
    with pytest.raises(ValueError, match='paired'): text_video_retrieval(t, v[:5])


def test_knapsack_matches_bruteforce():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = rng.integers(1, 9); vals = rng.random(n); wts = rng.integers(1, 10, n); cap = int(rng.integers(0, 30))
        best = max(sum(vals[list(c)]) for r in range(n + 1) for c in itertools.combinations(range(n), r) if sum(wts[list(c)]) <= cap)
        got = knapsack(vals, wts, cap)
        assert sum(wts[got]) <= cap and sum(vals[got]) == pytest.approx(best)


def test_summarise_budget_and_f_score():
    rng = np.random.default_rng(1)
    n = 300; bounds = np.sort(rng.choice(np.arange(1, n), 14, replace=False))
    starts = np.r_[0, bounds]; ends = np.r_[bounds - 1, n - 1]
    cp = np.stack([starts, ends], 1)
    s = summarise(rng.random(n), cp)
    assert s.sum() <= math.floor(0.15 * n) and set(np.unique(s)) <= {0, 1}
    for a, b in cp: assert len(set(s[a:b + 1])) == 1  # whole shots only
    users = rng.integers(0, 2, (4, n))
    f = [2 * (s * u).sum() / (s.sum() + u.sum()) for u in users]  # F = 2|s&u| / (|s| + |u|)
    assert summary_f_score(s, users) == pytest.approx(max(f)) and summary_f_score(s, users, 'mean') == pytest.approx(np.mean(f))
    with pytest.raises(ValueError, match='mode'): summary_f_score(s, users, 'median')
    with pytest.raises(ValueError, match='binary'): summary_f_score(s * 2, users)
    with pytest.raises(ValueError, match='frame_scores contains NaN'): summarise(np.full(n, np.nan), cp)
    with pytest.raises(ValueError, match='budget'): summarise(rng.random(n), cp, budget=0.)


def _write_ucf(d):
    d.mkdir()
    (d / 'classInd.txt').write_text('1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n')
    for s in (1, 2, 3):
        (d / f'trainlist0{s}.txt').write_text(f'ApplyEyeMakeup/v_ApplyEyeMakeup_g0{s}_c01.avi 1\r\nApplyLipstick/v_ApplyLipstick_g08_c01.avi 2\r\n'
                                               'Archery/v_Archery_g10_c03.avi 3\r\n')
        (d / f'testlist0{s}.txt').write_text('ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi\r\nArchery/v_Archery_g01_c01.avi\r\n')


def test_ucf101_reader_and_manifest(tmp_path):
    _write_ucf(tmp_path / 'ucfTrainTestlist')
    sp = read_ucf101_split(tmp_path / 'ucfTrainTestlist', split=2)
    assert [r['label'] for r in sp['train']] == [0, 1, 2] and sp['train'][0]['path'] == 'ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi'
    assert sp['test'] == [dict(path='ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi', label=0, class_name='ApplyEyeMakeup'),
                          dict(path='Archery/v_Archery_g01_c01.avi', label=2, class_name='Archery')]
    m = write_manifest(sp['test'], tmp_path / 'out' / 'test.csv', video_root=tmp_path / 'UCF-101')
    lines = m.read_text().splitlines()
    assert lines[0] == 'path,label,class_name' and lines[2] == f"{tmp_path / 'UCF-101' / 'Archery/v_Archery_g01_c01.avi'},2,Archery"
    (tmp_path / 'ucfTrainTestlist' / 'testlist01.txt').write_text('Bowling/v_Bowling_g01_c01.avi\n')
    with pytest.raises(ValueError, match='testlist01.txt line 1'): read_ucf101_split(tmp_path / 'ucfTrainTestlist', 1)
    with pytest.raises(ValueError, match='split must be'): read_ucf101_split(tmp_path / 'ucfTrainTestlist', 4)
    with pytest.raises(FileNotFoundError): read_ucf101_split(tmp_path / 'nowhere', 1)
    with pytest.raises(ValueError, match='rows is empty'): write_manifest([], tmp_path / 'x.csv')


def test_hmdb51_reader(tmp_path):
    d = tmp_path / 'testTrainMulti_7030_splits'; d.mkdir()
    for cname in ('wave', 'brush_hair', 'cartwheel'):
        for s in (1, 2, 3):
            (d / f'{cname}_test_split{s}.txt').write_text(f'{cname}_a_{s}.avi 1 \n{cname}_b.avi 2 \n{cname}_c.avi 0 \n')
    sp = read_hmdb51_split(d, 1)
    assert [r['class_name'] for r in sp['train']] == ['brush_hair', 'cartwheel', 'wave']  # sorted class order
    assert [r['label'] for r in sp['test']] == [0, 1, 2]
    assert sp['train'][2]['path'] == 'wave/wave_a_1.avi' and len(sp['test']) == 3  # id 0 (unused) dropped
    (d / 'wave_test_split1.txt').write_text('wave_a.avi 3\n')
    with pytest.raises(ValueError, match='wave_test_split1.txt line 1'): read_hmdb51_split(d, 1)
    with pytest.raises(ValueError, match='no .*_test_split'): read_hmdb51_split(tmp_path, 1)


def test_bad_inputs():
    x, y = _blobs(0, 30)
    cases = [(lambda: linear_probe(x[:0], y[:0], x, y), 'train_x is empty'),
             (lambda: linear_probe(x, y[:3], x, y), 'lengths must match'),
             (lambda: linear_probe(x, y, x.masked_fill(x > 1, float('nan')), y), 'test_x contains NaN'),
             (lambda: linear_probe(x, y % 2, x, y), 'classes absent from train_y'),
             (lambda: linear_probe(x, y.float(), x, y), 'train_y must be an integer tensor'),
             (lambda: retrieval_recall_at_k(x, y, x[:, :3], y), 'gallery_x must have 8 features'),
             (lambda: retrieval_recall_at_k(x, y, x, y, ks=(0,)), 'ks must be'),
             (lambda: few_shot_knn(x, y, x, y, n_per_class=11), 'has only 10'),
             (lambda: few_shot_knn(x, y, x, y + 5), 'classes absent'),
             (lambda: text_video_retrieval(x[:0], x[:0]), 'text is empty')]
    for fn, msg in cases:
        with pytest.raises((ValueError, TypeError), match=msg): fn()


def test_full_scale_example_in_notebook_runs(tmp_path, monkeypatch):
    """The Python sketch of 04_evaluation's 'At full scale' cell, run as written on tiny videos in the UCF-101 layout
    (2 classes, 10 train + 2 test videos each) with the demo config's tiny encoders: it must match the real signatures."""
    import nbformat
    from pathlib import Path
    from avlearn.media import write_av_file
    from avlearn.engine.config import load_config, config_to_dict
    from avlearn.engine.method import get_method
    from avlearn.engine.checkpoints import save_checkpoint
    root = Path(__file__).resolve().parents[1]
    nb = nbformat.read(root / 'nbs' / '04_evaluation.ipynb', as_version=4)
    md = next(c.source for c in nb.cells if c.cell_type == 'markdown' and c.source.startswith('## At full scale'))
    code = md.split('```python')[1].split('```')[0]
    splits, videos, run = tmp_path / 'ucfTrainTestlist', tmp_path / 'UCF-101', tmp_path / 'run'
    splits.mkdir()
    classes = ('Archery', 'Bowling')
    (splits / 'classInd.txt').write_text(''.join(f'{i + 1} {c}\n' for i, c in enumerate(classes)))
    g = np.random.default_rng(0)
    train, test = [], []
    for ci, c in enumerate(classes):
        for v in range(12):
            rel = f'{c}/v_{c}_g{v + 1:02d}_c01.avi'
            frames = np.clip(g.normal(60 + 130 * ci, 20, (24, 32, 32, 3)), 0, 255).astype(np.uint8)   # 1.5 s at 16 fps
            write_av_file(videos / rel, frames, fps=16.)
            (train if v < 10 else test).append((rel, ci))
    (splits / 'trainlist01.txt').write_text(''.join(f'{r} {ci + 1}\n' for r, ci in train))
    (splits / 'testlist01.txt').write_text(''.join(f'{r}\n' for r, _ in test))
    config = root / 'configs' / 'demo.yaml'
    cfg = load_config(config, ['data.clip_duration=0.5', 'data.size=32'])
    model = get_method(cfg.method)(cfg).build_model()
    save_checkpoint(dict(model=model.state_dict(), optimizer={}, step=0, epoch=0, config=config_to_dict(cfg)), run, 0)
    const = "SPLITS, VIDEOS, RUN, CONFIG, CLIPS = '/data/ucfTrainTestlist', '/data/UCF-101', 'runs/gdt_k400', 'configs/gdt_k400.yaml', 10"
    assert code.count(const) == 1, 'the example must keep its one line of constants'
    code = code.replace(const, f"SPLITS, VIDEOS, RUN, CONFIG, CLIPS = {str(splits)!r}, {str(videos)!r}, {str(run)!r}, {str(config)!r}, 3")
    code = code.replace("cfg = load_config(CONFIG)", "cfg = load_config(CONFIG, ['data.clip_duration=0.5', 'data.size=32'])")
    assert code.count('epochs=10,') == 1
    code = code.replace('epochs=10,', 'epochs=2,')                 # a shorter finetuning: this checks the calls, not accuracy
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ns = {}
    exec(compile(code, '04_evaluation: At full scale', 'exec'), ns)
    assert ns['xtr'].shape[:2] == (20, 3) and ns['xte'].shape[:2] == (4, 3) and ns['ytr'].tolist() == [0] * 10 + [1] * 10
    assert ns['ftr_x'].shape[:2] == (20, 1) and ns['fte_x'].shape[:2] == (4, 3)
    assert set(ns['shots']) == {1, 5} and 0 <= ns['probe']['accuracy'] <= 1 and set(ns['ret']) == {'R@1', 'R@5', 'R@20'}
    assert ns['probe']['accuracy'] == 1.0                      # dark vs bright videos: even random features separate them
