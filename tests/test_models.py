"""Heavier tests of avlearn.models: full-size encoders on small inputs, parameter counts, gradients, pickling and
state_dict round trips, text encoders and the registry."""
import copy, functools, io, pickle
import pytest
import torch
from torch import nn
from avlearn.models import (TinyR2Plus1D, TinyAudioNet, R2Plus1D18, r2plus1d_18, AudioResNet9, ProjectionHead,
                            BagOfWordsEncoder, WordEmbeddingEncoder, Vocabulary, bag_of_words, build_encoder,
                            register_encoder, count_parameters, encoder_summary, ENCODERS)

VIDEO = (2, 3, 4, 32, 32)
SPEC = (2, 1, 40, 101)


@functools.lru_cache(maxsize=None)
def _built(name):
    torch.manual_seed(0)
    return _factory(name)


def _make(name):
    "A fresh copy of a cached, seeded model (building R(2+1)D-18 costs more than copying it)."
    model, shape, out_dim = _built(name)
    return copy.deepcopy(model), shape, out_dim


def _factory(name):
    return {'tiny_video': lambda: (TinyR2Plus1D(), VIDEO, 128),
            'tiny_audio': lambda: (TinyAudioNet(), SPEC, 128),
            'r2plus1d_18': lambda: (r2plus1d_18(), VIDEO, 512),
            'r2plus1d_18_head': lambda: (r2plus1d_18(out_dim=10), VIDEO, 10),
            'audio_resnet9': lambda: (AudioResNet9(), SPEC, 512),
            'audio_resnet9_head': lambda: (AudioResNet9(out_dim=7), SPEC, 7)}[name]()


NAMES = ['tiny_video', 'tiny_audio', 'r2plus1d_18', 'r2plus1d_18_head', 'audio_resnet9', 'audio_resnet9_head']
HEAVY = ['tiny_video', 'tiny_audio', 'r2plus1d_18_head', 'audio_resnet9_head']  # the head variants cover the trunks too


@pytest.fixture(autouse=True)
def _seed_one_thread():
    "Seeded, and on one thread: the CI machine is shared, and thread contention costs more than it gains here."
    n = torch.get_num_threads(); torch.set_num_threads(1); torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize('name', NAMES)
def test_forward_shapes_and_finite(name):
    model, shape, out_dim = _make(name)
    y = model(torch.rand(shape))
    assert y.shape == (shape[0], out_dim) and torch.isfinite(y).all()
    assert model.out_dim == out_dim


def test_parameter_counts():
    import torchvision
    with torch.device('meta'):  # counting needs no initialised weights
        assert count_parameters(r2plus1d_18()) == 31_300_125
        assert count_parameters(AudioResNet9()) == 4_899_520
        assert count_parameters(r2plus1d_18(out_dim=400)) == 31_300_125 + 512 * 400 + 400  # = torchvision's Kinetics model
        assert count_parameters(r2plus1d_18(out_dim=400)) == count_parameters(torchvision.models.video.r2plus1d_18(weights=None))
    assert count_parameters(TinyR2Plus1D(width=8)) < count_parameters(TinyR2Plus1D(width=16)) < 100_000
    assert count_parameters(TinyAudioNet()) < 100_000


@pytest.mark.parametrize('name', HEAVY)
def test_gradients_reach_every_parameter(name):
    model, shape, _ = _make(name)
    x = torch.rand(shape, requires_grad=True)
    model(x).pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the trunk's first conv actually receives signal
    first = next(p for n, p in model.named_parameters() if p.ndim >= 4)
    assert first.grad.abs().sum() > 0


@pytest.mark.parametrize('name', HEAVY)
def test_state_dict_and_pickle_round_trip(name):
    model, shape, _ = _make(name)
    model(torch.rand(shape))  # update BatchNorm running stats so they are part of what must survive
    model.eval()
    x = torch.rand(shape)
    with torch.no_grad(): ref = model(x)
    # state_dict through a byte buffer into a freshly built model (built on `meta`, so nothing is initialised twice)
    buf = io.BytesIO(); torch.save(model.state_dict(), buf); buf.seek(0)
    with torch.device('meta'): fresh = _factory(name)[0]
    fresh.load_state_dict(torch.load(buf, weights_only=True), assign=True); fresh.eval()
    assert all(p.device.type == 'cpu' for p in fresh.state_dict().values())
    with torch.no_grad(): assert torch.allclose(fresh(x), ref, atol=1e-5)
    # the whole module pickled (what DataLoader workers / multiprocessing do), no torch.jit involved
    clone = pickle.loads(pickle.dumps(model))
    with torch.no_grad(): assert torch.allclose(clone(x), ref, atol=1e-5)


def test_state_dict_keys_map_to_torchvision():
    "The R(2+1)D-18 trunk keeps torchvision's parameter names, so torchvision checkpoints load (fc aside)."
    import torchvision
    tv = torchvision.models.video.r2plus1d_18(weights=None)
    with torch.device('meta'): ours = r2plus1d_18()
    sd = {k: v for k, v in tv.state_dict().items() if not k.startswith('fc.')}
    missing, unexpected = ours.load_state_dict(sd, strict=False, assign=True)
    assert not unexpected and not missing
    ours.eval(); tv.eval(); tv.fc = nn.Identity()
    x = torch.rand(VIDEO)
    with torch.no_grad(): assert torch.allclose(ours(x), tv(x), atol=1e-5)


@pytest.mark.parametrize('make,bad,msg', [
    (lambda: r2plus1d_18(), torch.rand(3, 4, 32, 32), 'video must have 5 dimensions'),
    (lambda: r2plus1d_18(), torch.rand(2, 1, 4, 32, 32), 'video must have shape (B, 3, T, H, W)'),
    (lambda: r2plus1d_18(), torch.zeros(2, 3, 4, 32, 32, dtype=torch.uint8), 'floating-point'),
    (lambda: AudioResNet9(), torch.rand(2, 40, 101), 'spectrogram must have 4 dimensions'),
    (lambda: AudioResNet9(), torch.rand(2, 3, 40, 101), 'spectrogram must have shape (B, 1, n_mels, frames)'),
    (lambda: AudioResNet9(), torch.full((2, 1, 40, 101), float('nan')), 'NaN'),
    (lambda: TinyR2Plus1D(), torch.rand(2, 3, 4, 3, 3), 'at least'),
    (lambda: ProjectionHead(512), torch.rand(2, 256), 'x must have shape (*, 512)'),
])
def test_bad_inputs_give_clear_errors(make, bad, msg):
    with pytest.raises((TypeError, ValueError), match=None) as e:
        make()(bad)
    assert msg in str(e.value)


def test_bad_constructor_arguments():
    for f, msg in [(lambda: TinyR2Plus1D(width=0), 'width'), (lambda: AudioResNet9(out_dim=0), 'out_dim'),
                   (lambda: ProjectionHead(0), 'in_dim'), (lambda: TinyAudioNet(norm='instance'), 'norm'),
                   (lambda: WordEmbeddingEncoder(1), 'vocab_size')]:
        with pytest.raises(ValueError) as e: f()
        assert msg in str(e.value)


def test_projection_head_layers_and_norm():
    h = ProjectionHead(512, 256, hidden_dim=512, batch_norm=True)
    z = h(torch.randn(4, 512))
    assert torch.allclose(z.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert sum(isinstance(m, nn.Linear) for m in ProjectionHead(512, 128, 512, n_layers=3).modules()) == 3
    assert sum(isinstance(m, nn.Linear) for m in ProjectionHead(512, 128, hidden_dim=0, n_layers=3).modules()) == 1


def test_group_norm_variants_train_with_batch_of_one():
    for m, shape in [(TinyR2Plus1D(norm='group'), (1, 3, 8, 32, 32)), (TinyAudioNet(norm='group'), (1, 1, 40, 50))]:
        m.train(); y = m(torch.rand(shape)); y.sum().backward()
        assert torch.isfinite(y).all()


def test_tiny_video_encoder_learns_time_direction():
    "A few Adam steps on a task that needs temporal order (a square moving right vs the same clip played backwards)."
    g = torch.Generator().manual_seed(0)
    n, T, S = 32, 8, 32
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.zeros(n, 3, T, S, S)
    starts = torch.randint(0, S - 4 - 2 * (T - 1) + 1, (n,), generator=g)
    for i in range(n):
        for t in range(T):
            c = int(starts[i]) + 2 * t
            x[i, :, t, 12:16, c:c + 4] = 1.
    x[y == 0] = x[y == 0].flip(2)  # class 0: the same motion backwards, so the set of frames carries no label
    model = TinyR2Plus1D(out_dim=2, width=8)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(25):
        loss = nn.functional.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_vocabulary_unknown_words_and_padding():
    voc = Vocabulary.build(['the red ball bounces', 'the blue cube grows', 'the red cube'], max_size=5)
    assert voc.itos[:2] == ['<pad>', '<unk>'] and len(voc) == 7
    ids = voc.encode_batch(['the green ball', 'red', ''])
    assert ids.shape == (3, 3) and ids[0, 1].item() == voc.unk_id and ids[1, 1:].tolist() == [0, 0] and ids[2].tolist() == [0, 0, 0]
    assert pickle.loads(pickle.dumps(voc)).itos == voc.itos
    with pytest.raises(TypeError): voc.encode_batch('the red ball')
    with pytest.raises(TypeError): voc.encode(3)


def test_text_encoders_gradients_and_padding_invariance():
    voc = Vocabulary.build(['a red ball bounces', 'a blue cube grows in the city', 'a small red cube'])
    ids = voc.encode_batch(['a red ball bounces', 'a small cube'])
    longer = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], 1)  # more padding must not change anything
    for enc in [BagOfWordsEncoder(len(voc), 16), WordEmbeddingEncoder(len(voc), 8, 16, hidden_dim=12)]:
        out = enc(ids)
        assert out.shape == (2, 16) and torch.allclose(out, enc(longer), atol=1e-6)
        out.sum().backward()
        assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)
    assert bag_of_words(ids, len(voc)).sum(1).tolist() == [4, 3]


def test_registry_builds_every_encoder():
    for name, kw in [('tiny_r2plus1d', {}), ('tiny_audio', {}), ('r2plus1d_18', {'out_dim': 8}), ('audio_resnet9', {}),
                     ('bow_text', {'vocab_size': 10}), ('word_embedding_text', {'vocab_size': 10, 'embed_dim': 4, 'out_dim': 8}),
                     ('projection_head', {'in_dim': 16})]:
        assert isinstance(build_encoder(name, **kw), nn.Module), name
    with pytest.raises(ValueError, match='unknown encoder'): build_encoder('nope')

    @register_encoder('_test_identity')
    def _identity(): return nn.Identity()
    try: assert isinstance(build_encoder('_test_identity'), nn.Identity)
    finally: ENCODERS.pop('_test_identity')


def test_encoder_summary_uses_meta_and_leaves_module_intact():
    m = AudioResNet9()
    w = m.layer1[0].conv1.weight.clone()
    s = encoder_summary({'a': (m, (8, 1, 40, 99)), 'text': (BagOfWordsEncoder(20, 4), (3, 5), torch.long)})
    assert s.loc['a', 'parameters'] == 4_899_520 and s.loc['a', 'output'] == (8, 512) and s.loc['a', 'feature_map'] == (8, 512, 2, 4)
    assert s.loc['text', 'output'] == (3, 4)
    assert m.layer1[0].conv1.weight.device.type == 'cpu' and torch.equal(m.layer1[0].conv1.weight, w)
