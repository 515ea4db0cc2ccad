"""Bad input to the public functions of the foundation modules (core, data, media, datasets, transforms, models, losses,
evaluation): each tensor or array argument is replaced by an empty one, one holding a NaN, one of the wrong dtype and
one of the wrong shape. Each call must either raise a ValueError/TypeError whose message names the argument, or give
the documented result listed beside it. (Sinkhorn and attention are tested by their own notebooks.)"""
import atexit, math, shutil, tempfile
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avlearn import core, data, media, datasets, transforms as tf, models, losses, evaluation as ev

G = torch.Generator().manual_seed(0)
TMP = Path(tempfile.mkdtemp(prefix='avlearn_bad_inputs_')); atexit.register(shutil.rmtree, TMP, True)


def rand(*shape): return torch.rand(*shape, generator=G)
def unit(*shape): return F.normalize(torch.randn(*shape, generator=G), dim=-1)


# documented results for the empty variants ------------------------------------------------------------------------
def empty_batch_like(shape):
    "An empty batch whose other dimensions are `shape` (the shape one item would give)."
    def check(out): assert tuple(out.shape) == (0, *shape), out.shape
    return check

def zeros_of(n):
    def check(out): assert torch.equal(out, torch.zeros(n))
    return check

def empty_dict(out): assert out == {}


V5, V4 = rand(2, 3, 4, 16, 12), rand(3, 4, 16, 12)          # video batch and clip
WAVE, WAVES = rand(800) * 2 - 1, rand(2, 800) * 2 - 1
SPEC = torch.randn(2, 1, 40, 21, generator=G)
EMB, EMB2 = unit(6, 8), unit(6, 8)
LABELS = torch.arange(6) % 3
FEATS = torch.randn(12, 5, generator=G)
FEAT_Y = torch.arange(12) % 3
MEL = tf.LogMelSpectrogram(8000, n_mels=20)
BANK = losses.MemoryBank(20, 8)
TINY_V, TINY_A = models.TinyR2Plus1D(out_dim=8, width=4).eval(), models.TinyAudioNet(out_dim=8, width=4).eval()
HEAD = models.ProjectionHead(8, 4).eval()

# name -> (function, good keyword arguments, {argument to perturb: {variant: documented check}})
SPECS = {
    # transforms: an empty batch gives an empty batch of the shape one clip would give (documented in 06_transforms)
    'resize_clip': (tf.resize_clip, dict(video=V5, size=8), {'video': {'empty': empty_batch_like((3, 4, 8, 8))}}),
    'random_resized_crop': (tf.random_resized_crop, dict(video=V5, size=8, generator=G),
                            {'video': {'empty': empty_batch_like((3, 4, 8, 8))}}),
    'horizontal_flip': (tf.horizontal_flip, dict(video=V5), {'video': {'empty': empty_batch_like((3, 4, 16, 12))}}),
    'center_crop': (tf.center_crop, dict(video=V5, size=8), {'video': {'empty': empty_batch_like((3, 4, 8, 8))}}),
    'color_jitter': (tf.color_jitter, dict(video=V5), {'video': {'empty': empty_batch_like((3, 4, 16, 12))}}),
    'normalize_video': (tf.normalize_video, dict(video=V5), {'video': {'empty': empty_batch_like((3, 4, 16, 12))}}),
    'volume_jitter': (tf.volume_jitter, dict(audio=WAVES), {'audio': {'empty': empty_batch_like((800,))}}),
    'spec_augment': (tf.spec_augment, dict(spec=SPEC), {'spec': {'empty': empty_batch_like((1, 40, 21))}}),
    'time_window': (tf.time_window, dict(video=V4, audio=WAVE, start_s=0., duration_s=0.25, fps=8, sample_rate=1600),
                    {'video': {}, 'audio': {}}),
    'reverse_time': (tf.reverse_time, dict(video=V5), {'video': {'empty': empty_batch_like((3, 4, 16, 12))}}),
    'LogMelSpectrogram': (MEL, dict(waveform=WAVES), {'waveform': {'empty': empty_batch_like((1, 20, 11))}}),
    # models (their checks name the input by its role: video, spectrogram); an empty batch gives an empty batch
    'TinyR2Plus1D': (TINY_V, dict(x=rand(2, 3, 4, 16, 16)), {'x': {}}, {'x': 'video'}),
    'TinyAudioNet': (TINY_A, dict(x=SPEC), {'x': {}}, {'x': 'spectrogram'}),
    'ProjectionHead': (HEAD, dict(x=EMB), {'x': {'empty': empty_batch_like((4,))}}),
    'check_video': (models.check_video, dict(x=V5), {'x': {}}, {'x': 'video'}),
    'check_spectrogram': (models.check_spectrogram, dict(x=SPEC), {'x': {}}, {'x': 'spectrogram'}),
    'bag_of_words': (models.bag_of_words, dict(token_ids=torch.tensor([[1, 2, 0], [3, 0, 0]]), vocab_size=5),
                     {'token_ids': {'empty': empty_batch_like((5,))}}),
    # losses
    'info_nce': (losses.info_nce, dict(query=EMB, key=EMB2), {'query': {}, 'key': {}}),
    'nt_xent': (losses.nt_xent, dict(z1=EMB, z2=EMB2), {'z1': {}, 'z2': {}}),
    'cross_modal_nce': (losses.cross_modal_nce, dict(video=EMB, audio=EMB2), {'video': {}, 'audio': {}}),
    'memory_nce': (losses.memory_nce, dict(query=EMB, positive=EMB2, negatives=unit(6, 5, 8)),
                   {'query': {}, 'positive': {}, 'negatives': {}}),
    'MemoryBank.get': (BANK.get, dict(modality='video', index=torch.tensor([1, 2])),   # documented: index of any shape
                       {'index': {'empty': empty_batch_like((8,)), 'shape': lambda out: out.shape == (2, 1, 8)}}),
    'triplet_ranking_loss': (losses.triplet_ranking_loss, dict(text=EMB, video=EMB2), {'text': {}, 'video': {}}),
    'triplet_margin_loss': (losses.triplet_margin_loss, dict(anchor=EMB, positive=EMB2, negative=unit(6, 8)),
                            {'anchor': {}, 'positive': {}, 'negative': {}}),
    'composition_loss': (losses.composition_loss, dict(h=EMB, composed=EMB2), {'h': {}, 'composed': {}}),
    # evaluation
    'average_clips': (ev.average_clips, dict(x=torch.randn(4, 3, 5)),
                      {'x': {'empty': lambda out: out.shape == (0, 5),
                             'nan': lambda out: out.isnan().any()}}),        # documented: NaN features stay NaN here
    'linear_probe': (ev.linear_probe, dict(train_x=FEATS, train_y=FEAT_Y, test_x=FEATS, test_y=FEAT_Y, epochs=5),
                     {'train_x': {}, 'train_y': {}, 'test_x': {}, 'test_y': {}}),
    'retrieval_recall_at_k': (ev.retrieval_recall_at_k, dict(query_x=FEATS, query_y=FEAT_Y, gallery_x=FEATS,
                                                             gallery_y=FEAT_Y, ks=(1,)),
                              {'query_x': {}, 'query_y': {}, 'gallery_x': {}, 'gallery_y': {}}),
    'few_shot_knn': (ev.few_shot_knn, dict(train_x=FEATS, train_y=FEAT_Y, test_x=FEATS, test_y=FEAT_Y, n_trials=2),
                     {'train_x': {}, 'train_y': {}, 'test_x': {}, 'test_y': {}}),
    'text_video_retrieval': (ev.text_video_retrieval, dict(text=EMB, video=EMB2), {'text': {}, 'video': {}}),
    'clustering_metrics': (ev.clustering_metrics, dict(pred=np.arange(6) % 2, true=np.arange(6) % 3),
                           {'pred': {}, 'true': {}}),
    'summary_f_score': (ev.summary_f_score,
                        dict(summary=np.array([1, 0, 1, 0]), user_summaries=np.array([[1, 1, 0, 0]])),
                        {'summary': {}, 'user_summaries': {}}),
    # datasets / data / core
    'multi_hot': (datasets.multi_hot, dict(labels=torch.tensor([0, 2]), n_classes=3),
                  {'labels': {'empty': zeros_of(3)}}),                  # no label: an all-zero target (documented)
    'write_av_file': (lambda **kw: media.write_av_file(TMP / 'w.mp4', **kw),
                      dict(video=(rand(4, 16, 16, 3) * 255).byte().numpy(), audio=(WAVE * 0.5).numpy(), fps=8,
                           sample_rate=8000),
                      {'video': {}, 'audio': {}}),
    'collate_skip': (media.collate_skip, dict(items=[dict(x=torch.ones(2))]), {}),
    'to_numpy': (core.to_numpy, dict(x=EMB), {}),
}


def _variants(x):
    "The bad versions of a tensor / array argument: empty, NaN, wrong dtype, wrong shape."
    is_np = isinstance(x, np.ndarray)
    t = torch.as_tensor(x)
    out = {'empty': t[:0]}
    if t.is_floating_point():
        nan = t.clone(); nan.view(-1)[0] = float('nan'); out['nan'] = nan
        out['dtype'] = (t * 10).long()
    else:
        out['dtype'] = t.float() + 0.5
    out['shape'] = t[..., None]                         # one trailing dimension too many
    return {k: (v.numpy() if is_np else v) for k, v in out.items()}


# findings outside this module set's owners' reach for now: reported, kept visible as strict xfails
OPEN = {}   # (cluster_negatives moved to avlearn.papers.deep_cluster, its empty case fixed: tests/test_deep_cluster.py)
CASES = [pytest.param(name, arg, variant, marks=pytest.mark.xfail(strict=True, reason=OPEN[name, arg, variant]))
         if (name, arg, variant) in OPEN else (name, arg, variant)
         for name, spec in SPECS.items() for arg in spec[2] for variant in _variants(spec[1][arg])]


@pytest.mark.parametrize('name', sorted(SPECS))
def test_good_arguments_work(name):
    fn, kw = SPECS[name][:2]
    fn(**kw)


@pytest.mark.parametrize('name,arg,variant', CASES)
def test_bad_argument_is_a_clear_error_or_documented(name, arg, variant):
    fn, kw, args = SPECS[name][:3]
    said = SPECS[name][3].get(arg, arg) if len(SPECS[name]) > 3 else arg
    bad = _variants(kw[arg])[variant]
    try: out = fn(**{**kw, arg: bad})
    except (ValueError, TypeError) as e:
        assert said in str(e), f"{name}({arg}={variant}): the error does not name {said!r}: {e}"
        return
    documented = args[arg].get(variant)
    assert documented is not None, f"{name}({arg}={variant}) returned instead of raising, and no result is documented"
    assert documented(out) is not False


# scalar settings: NaN / infinite / wrong type are refused with the setting's name ---------------------------------
SCALARS = [
    (tf.resize_clip, dict(video=V4), 'size', [0, (8, 0), 'big']),
    (tf.horizontal_flip, dict(video=V4), 'p', [math.nan, 2., '1']),
    (tf.volume_jitter, dict(audio=WAVE), 'strength', [math.nan, -1.]),
    (tf.time_window, dict(video=V4, audio=None, start_s=0., fps=8, sample_rate=1600), 'duration_s',
     [math.nan, 0., -1.]),
    (losses.info_nce, dict(query=EMB, key=EMB2), 'temperature', [math.nan, 0., -1., '0.1']),
    (losses.MemoryBank, dict(n=10, dim=4), 'device',
     ['gpu', 'cuda:99'] + ([] if torch.cuda.is_available() else ['cuda'])),
    (ev.linear_probe, dict(train_x=FEATS, train_y=FEAT_Y, test_x=FEATS, test_y=FEAT_Y, epochs=5), 'lr',
     [math.inf, math.nan, 0., -1.]),
    (ev.finetune,
     dict(encoder=torch.nn.Linear(5, 4), train_x=FEATS, train_y=FEAT_Y, test_x=FEATS, test_y=FEAT_Y, epochs=1),
     'lr', [math.inf, math.nan, 0.]),
    (media.read_clip, dict(path='x.mp4'), 'start_s', [math.nan, -1.]),
    (media.read_clip, dict(path='x.mp4'), 'duration_s', [math.nan, 0., math.inf]),
    (media.read_clip, dict(path='x.mp4'), 'fps', [math.nan, 0.]),
    (datasets.multi_hot, dict(labels=[0]), 'n_classes', [0, math.nan]),
    (data.class_probabilities, dict(), 'n_classes', [0, -3]),
    (data.ToyWorldConfig, dict(), 'fps', [math.nan, 0.]),
    (data.ToyWorldConfig, dict(), 'n_frames', [0, 2.5]),
    (data.ToyWorld, dict(), 'n', [0, -1]),
    (data.asr_corrupt, dict(sentence='a red ball', rng=np.random.default_rng(0)), 'rate', [math.nan, 2.]),
    (core.seed_everything, dict(), 'seed', [-1, 1.5, math.nan]),
    (datasets.class_index, dict(), 'names', [[]]),
    (datasets.write_manifest, dict(out=TMP / 'm.csv'), 'rows', [[]]),
    (media.write_av_file, dict(path=TMP / 'x.mp4', video=np.zeros((2, 16, 16, 3), np.uint8)), 'fps', [math.nan, 0.]),
    (media.write_av_file, dict(path=TMP / 'x.mp4', video=np.zeros((2, 16, 16, 3), np.uint8)), 'rotation',
     [45, math.nan]),
    (media.write_av_file,
     dict(path=TMP / 'x.mp4', video=np.zeros((2, 16, 16, 3), np.uint8), audio=np.zeros(800, np.float32)),
     'sample_rate', [1600, 0]),                              # AAC has no 1600 Hz mode: a clear error, not FFmpeg's
]


@pytest.mark.parametrize('fn,kw,arg,value', [(f, kw, a, v) for f, kw, a, vs in SCALARS for v in vs],
                         ids=lambda x: getattr(x, '__name__', None) if callable(x) else None)
def test_bad_setting_is_a_clear_error(fn, kw, arg, value):
    with pytest.raises((ValueError, TypeError)) as e: fn(**kw, **{arg: value})
    assert arg in str(e.value), str(e.value)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('name', ['resize_clip', 'random_resized_crop', 'center_crop', 'horizontal_flip',
                                  'color_jitter', 'normalize_video', 'reverse_time'])
def test_half_precision_clips_keep_their_dtype(name, dtype):
    import inspect
    fn, kw = SPECS[name][:2]
    random = 'generator' in inspect.signature(fn).parameters
    seeded = lambda: {'generator': torch.Generator().manual_seed(1)} if random else {}
    ref = fn(**{**kw, 'video': V5, **seeded()})
    out = fn(**{**kw, 'video': V5.to(dtype), **seeded()})
    assert out.dtype == dtype and out.shape == ref.shape and (out.float() - ref).abs().max() < 0.05
