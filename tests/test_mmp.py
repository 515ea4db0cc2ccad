"""MMP: the issue's bad inputs (unknown language codes, empty narrations, out-of-vocabulary words, a one-language batch
for the cross-lingual NCE), eq. 7's conditioning, the Multi-HowTo100M reader on files, both configs dry-run at their
real shapes (pretraining, then finetuning from its weights) and the `transformers` path on a tiny random BERT."""
import json
from pathlib import Path
import numpy as np
import pytest
import torch
from fastcore.test import test_fail as check_fails
from avlearn.engine.config import load_config
from avlearn.engine.method import claims_of, get_method
from avlearn.papers.mmp import (LANGUAGES, MMP, MMPModel, HFTextEncoder, MultiHowTo100M, PoolingHead, TextEncoder,
                                encode_texts, mask_tokens, mmp_loss, multilingual_vocabulary, read_subtitles,
                                train_on_features)

ROOT = Path(__file__).resolve().parents[1]
TINY = ['method=mmp', 'method_args={dim: 16, feature_dim: 12, text_layers: 1, heads: 4}']
SCRATCH = ['method_args.text_backbone=scratch', "method_args.pretrained=''", 'method_args.freeze_below=0']


def _batch(vocab, langs=('en', 'de', 'sw'), B=3):
    texts = {'en': 'a red ball sits still', 'de': 'ein roter ball steht still', 'sw': 'mpira mwekundu imetulia'}
    pad = lambda x: torch.nn.functional.pad(x, (0, 8 - x.shape[-1]))
    text = torch.stack([pad(encode_texts(vocab, [texts[l]] * B, 8)) for l in langs], 1)
    return dict(video=torch.randn(B, 5, 12), text=text)


# ---------- the bad inputs ----------
def test_unknown_language_codes():
    check_fails(lambda: load_config(None, TINY + ['method_args.languages=[en, tlh]']),
                contains="unknown language code(s) ['tlh']")
    check_fails(lambda: multilingual_vocabulary(['en', 'en']), contains='repeats a language')
    check_fails(lambda: read_subtitles('unused.json', 'xx'), contains="unknown language code(s) ['xx']")


def test_empty_narrations(tmp_path):
    vocab = multilingual_vocabulary()
    check_fails(lambda: encode_texts(vocab, ['a ball', '', 'um']), contains='empty narration(s) at row(s) [1]')
    check_fails(lambda: encode_texts(vocab, ['a ball', '?!']), contains='row(s) [1]')   # no word at all
    (tmp_path / 'en.json').write_text(json.dumps({'v': {'text': ['', ' '], 'start': [0, 1], 'end': [1, 2]},
                                                  'w': {'text': ['hi'], 'start': [0], 'end': [1]}}))
    assert read_subtitles(tmp_path / 'en.json', 'en') == {'w': [(0.0, 1.0, 'hi')]}   # defined: empty lines dropped
    model = MMPModel(TextEncoder(len(vocab), 16, 1, 4, 8), 12, 16)
    check_fails(lambda: model.text(torch.zeros(2, 4, dtype=torch.long)), contains='empty row(s) [0, 1]')


def test_out_of_vocabulary_words():
    vocab = multilingual_vocabulary()
    ids = encode_texts(vocab, ['a wombat bounces'])
    assert ids[0, 1].item() == vocab.unk_id and ids[0, 0].item() == vocab.stoi['a']
    check_fails(lambda: encode_texts(vocab, ['a wombat bounces'], oov='error'), contains="['wombat']")
    check_fails(lambda: encode_texts(vocab, ['a ball'], oov='skip'), contains="oov must be 'unk' or 'error'")


def test_one_language_batch_for_the_cross_lingual_loss():
    meth = MMP(load_config(None, TINY + ['method_args.cross=1.0']))
    model = meth.build_model()
    check_fails(lambda: meth.loss(model, _batch(meth.vocab, ('en',))),
                contains='the cross-lingual NCE (eq. 7) needs captions in 2 languages per video')
    loss, logs = meth.loss(model, _batch(meth.vocab))
    assert torch.isfinite(loss) and 'L_cross' in logs
    plain = MMP(load_config(None, TINY))                          # without eq. 7 one language is enough
    assert torch.isfinite(plain.loss(plain.build_model(), _batch(plain.vocab, ('sw',)))[0])


# ---------- eq. 7 ----------
def test_conditioned_pooling_sees_the_video_and_only_in_keys():
    torch.manual_seed(0)
    head = PoolingHead(16, 2, 4, dropout=0.0).eval()
    x, v = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    a, b = head(x, context=v), head(x, context=v.flip(0))
    assert not torch.allclose(a, b)                              # the conditioning video matters ...
    assert torch.allclose(head(x, context=v)[1], head(x[1:], context=v[1:])[0], atol=1e-5)   # ... row by row


def test_cross_lingual_gradient_reaches_the_video_projection_through_the_text_head():
    meth = MMP(load_config(None, TINY + ['method_args.intra=0.0', 'method_args.cross=1.0']))
    model = meth.build_model()
    video, text = _batch(meth.vocab).values()
    out = model(video, [text[:, 0], text[:, 1]], condition=True)
    loss = torch.nn.functional.mse_loss(out['x_v'][0], out['x_v'][1].detach() + 1)
    loss.backward()
    assert model.video_proj.weight.grad.abs().sum() > 0 and model.video_pool.first.grad is None


# ---------- reader ----------
def test_reader_and_dataset(tmp_path):
    subs = {'vid': {'text': ['first line', 'second line'], 'start': [0.0, 4.0], 'end': [4.0, 30.0]}}
    (tmp_path / 'en.json').write_text(json.dumps(subs))
    (tmp_path / 'de.json').write_text(json.dumps({'vid': {'text': ['erste'], 'start': [1.0], 'end': [2.0]}}))
    np.save(tmp_path / 'vid.npy', np.ones((20, 3), np.float32))
    vocab = multilingual_vocabulary()
    ds = MultiHowTo100M(tmp_path, {'en': tmp_path / 'en.json', 'de': tmp_path / 'de.json'}, vocab.encode, 16, 6)
    assert len(ds) == 2 and ds[1]['video'].shape == (16, 3) and ds[1]['video'].sum() == 16 * 3   # cropped to 16 s
    assert (ds[1]['text'][1] == 0).all() and (ds[0]['text'][1] != 0).any()
    (tmp_path / 'bad.json').write_text(json.dumps({'vid': {'text': ['x'], 'start': [3.0], 'end': [1.0]}}))
    check_fails(lambda: read_subtitles(tmp_path / 'bad.json', 'en'), contains='need 0 <= start <= end')
    check_fails(lambda: MultiHowTo100M(tmp_path / 'nowhere', {'en': tmp_path / 'en.json'}, vocab.encode),
                contains='has features in')


# ---------- configs at their real shapes ----------
@pytest.mark.parametrize('name', ['mmp_howto100m', 'mmp_vtt'])
def test_configs_load_with_the_papers_settings(name):
    cfg = load_config(ROOT / 'configs' / f'{name}.yaml')
    a = get_method(cfg.method)(cfg).args
    assert (a.dim, a.feature_dim, a.pool_layers, a.heads, a.temperature, a.mask_rate) == (1024, 1024, 2, 4, 0.1, 0.05)
    assert (a.text_backbone, a.hf_layer, a.freeze_below, a.dropout) == ('transformers', 12, 9, 0.3)
    assert (cfg.optim.lr, cfg.optim.clip_grad) == (2e-4, 0.2)
    assert (cfg.data.batch_size, cfg.epochs) == ((64, 16) if name == 'mmp_howto100m' else (128, 10))


def test_dry_run_pretraining_then_finetuning_at_real_shapes(tmp_path):
    "Both configs, 2 steps each at D = 1024 on 1024-d features (the scratch encoder stands in for XLM-R)."
    pre = train_on_features(load_config(ROOT / 'configs' / 'mmp_howto100m.yaml', SCRATCH), dry_run=True)
    assert pre.step == 2 and pre.model.video_proj.weight.shape == (1024, 1024)
    weights = tmp_path / 'pre.pt'
    torch.save(pre.model.state_dict(), weights)
    ft = train_on_features(load_config(ROOT / 'configs' / 'mmp_vtt.yaml',
                                       SCRATCH + ['method_args.freeze_below=1', f'method_args.init_from={weights}']),
                           dry_run=True)
    assert ft.step == 2
    assert not any(p.requires_grad for p in ft.model.text_encoder.tokens.parameters())
    with torch.no_grad(): assert ft.model.eval().video(torch.randn(1, 16, 1024)).shape == (1, 1024)


# ---------- the transformers path ----------
def test_hf_text_encoder_on_a_tiny_random_bert():
    transformers = pytest.importorskip('transformers')
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=16)
    enc = HFTextEncoder('', layer=2, freeze_below=1, model=transformers.BertModel(cfg))
    model = MMPModel(enc, 12, 16, dropout=0.0)
    text = torch.randint(1, 50, (3, 2, 6))
    loss, _ = mmp_loss(model, torch.randn(3, 5, 12), text, cross=1.0)
    loss.backward()
    assert enc.model.encoder.layer[0].attention.self.query.weight.grad is None      # frozen below 1
    assert enc.model.encoder.layer[1].attention.self.query.weight.grad is not None
    check_fails(lambda: HFTextEncoder('', layer=4, model=transformers.BertModel(cfg)),
                contains='layer must be in [1, 3]')


def _tiny_xlmr(folder: Path, words=('put', 'the', 'flour', 'in', 'stir', 'well', 'mehl', 'rein', 'gut', 'umruehren')):
    """A tiny random XLM-R and its tokenizer saved to `folder` the way a local copy of xlm-roberta-large is: sentence
    start 0, padding 1 (not 0), end 2, unknown 3, mask 4; every sentence is wrapped in <s> ... </s>."""
    transformers = pytest.importorskip('transformers')
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    itos = ['<s>', '<pad>', '</s>', '<unk>', '<mask>', *words]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(itos)}, unk_token='<unk>'))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single='<s> $A </s>', special_tokens=[('<s>', 0), ('</s>', 2)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token='<s>', eos_token='</s>', pad_token='<pad>',
                                         unk_token='<unk>', mask_token='<mask>').save_pretrained(folder)
    cfg = transformers.XLMRobertaConfig(vocab_size=len(itos), hidden_size=32, num_hidden_layers=3,
                                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=40,
                                        pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    transformers.XLMRobertaModel(cfg).save_pretrained(folder)
    return folder


def _subtitled_features(folder: Path, feature_dim: int = 8) -> Path:
    "Two videos of features with English subtitles and German ones for one of them; the manifest's path."
    folder.mkdir()
    subs = {'en': {'v1': {'text': ['put the flour in', 'stir well'], 'start': [0., 4.], 'end': [3., 8.]},
                   'v2': {'text': ['stir the flour', 'put it in'], 'start': [0., 5.], 'end': [4., 9.]}},
            'de': {'v1': {'text': ['mehl rein', 'gut umruehren'], 'start': [0., 4.], 'end': [3., 8.]}}}
    for lang, s in subs.items(): (folder / f'{lang}.json').write_text(json.dumps(s))
    for vid in ('v1', 'v2'): np.save(folder / f'{vid}.npy', np.random.rand(10, feature_dim).astype(np.float32))
    spec = dict(features=str(folder), subtitles={l: str(folder / f'{l}.json') for l in subs}, length=6)
    (folder / 'pretrain.json').write_text(json.dumps(spec))
    return folder / 'pretrain.json'


def test_hf_text_encoder_from_a_local_folder_uses_its_tokenizers_padding_and_mask(tmp_path):
    """XLM-R pads with 1 and starts every sentence with 0: the encoder, the dataset, the masking and the loss all use
    the tokenizer's ids (a pipeline that padded with 0 would read every sentence start as padding)."""
    enc = HFTextEncoder(str(_tiny_xlmr(tmp_path / 'lm')), layer=2, freeze_below=1)
    assert (enc.pad_id, enc.mask_id) == (1, 4)
    ids = enc.encode('put the flour in')
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) == 6
    manifest = json.loads(_subtitled_features(tmp_path / 'data').read_text())
    ds = MultiHowTo100M(manifest['features'], manifest['subtitles'], enc.encode, length=6, max_len=8,
                        pad_id=enc.pad_id)
    item = ds[2]                                                    # v2's first line: no German subtitle
    assert item['text'][0, 0] == 0 and (item['text'][1] == 1).all()
    model = MMPModel(enc, 8, 16, dropout=0.0).eval()
    with torch.no_grad():                                            # padding columns change nothing
        short = torch.tensor([ids])
        padded = torch.nn.functional.pad(short, (0, 3), value=enc.pad_id)
        assert torch.allclose(model.text(short), model.text(padded), atol=1e-5)
    masked = mask_tokens(torch.stack([ds[i]['text'] for i in range(3)]), 1.0, enc.mask_id, enc.pad_id)
    assert ((masked == enc.mask_id) | (masked == enc.pad_id)).all() and (masked == enc.pad_id).sum() > 0
    text = torch.stack([ds[i]['text'] for i in range(len(ds))])
    loss, logs = mmp_loss(model.train(), torch.stack([ds[i]['video'] for i in range(len(ds))]), text,
                          mask_id=enc.mask_id, pad_id=enc.pad_id, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_full_scale_config_trains_from_local_transformers_weights(tmp_path):
    "configs/mmp_howto100m.yaml with `pretrained` a local folder: 2 steps on subtitled features through the engine."
    lm = _tiny_xlmr(tmp_path / 'lm')
    cfg = load_config(ROOT / 'configs' / 'mmp_howto100m.yaml',
                      [f'method_args.pretrained={lm}', 'method_args.hf_layer=2', 'method_args.freeze_below=1',
                       'method_args.dim=16', 'method_args.feature_dim=8', 'method_args.max_len=8',
                       f'data.train_manifest={_subtitled_features(tmp_path / "data")}', 'data.batch_size=2',
                       'data.num_workers=0', 'max_steps=2', 'epochs=2', 'precision=fp32'])
    trainer = train_on_features(cfg, tmp_path / 'run')
    assert trainer.step == 2
    enc = trainer.model.text_encoder
    assert isinstance(enc, HFTextEncoder) and enc.pad_id == 1
    assert not any(p.requires_grad for p in enc.model.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in enc.model.encoder.layer[1].parameters())
    assert trainer.method.token_ids(trainer.model) == (1, 4)


def test_claims_registered():
    names = {c.name for c in claims_of('mmp')}
    assert {'table4_mmp_beats_mp', 'table4_distant_language', 'table3_intra_helps', 'table3_cross_helps'} <= names
    assert len(LANGUAGES) >= 5
