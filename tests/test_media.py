"""Bad media, made for real: every case (missing, corrupt, no audio, short) under every policy of `ManifestDataset`,
plus read/write round trips and DataLoader workers sharing the error counts."""
import csv
import numpy as np
import pytest
import torch
from avlearn.media import (write_av_file, probe, read_clip, ManifestDataset, collate_skip, MediaError, MissingMediaError,
                           CorruptMediaError, NoAudioError, ShortClipError, MEDIA_CASES, POLICIES)

FPS, SR, D = 16, 16000, 1.0
ERRORS = dict(missing=MissingMediaError, corrupt=CorruptMediaError, no_audio=NoAudioError, short=ShortClipError)


def _clip(seconds, seed=0):
    rng = np.random.default_rng(seed)
    T, S = int(round(seconds * FPS)), int(round(seconds * SR))
    v = np.zeros((T, 32, 32, 3), np.uint8)
    for t in range(T): v[t, 8:24, :] = 40 + (200 * t) // max(T - 1, 1)          # a band that brightens over time
    a = (0.5 * np.sin(2 * np.pi * 330 * np.arange(S) / SR) + 0.05 * rng.standard_normal(S)).clip(-1, 1).astype(np.float32)
    return v, a


@pytest.fixture(scope='module')
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp('media')
    v, a = _clip(2.0)
    write_av_file(d / 'good.mp4', v, a, FPS, SR)
    raw = (d / 'good.mp4').read_bytes()
    (d / 'truncated.mp4').write_bytes(raw[:len(raw) // 2])                       # moov atom (at the end) lost
    write_av_file(d / 'fs.mp4', v, a, FPS, SR, faststart=True)
    raw = (d / 'fs.mp4').read_bytes()
    (d / 'truncated_faststart.mp4').write_bytes(raw[:len(raw) // 3])              # header kept, data cut
    (d / 'fs.mp4').unlink()
    (d / 'garbage.mp4').write_bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    (d / 'empty.mp4').write_bytes(b'')
    write_av_file(d / 'noaudio.mp4', v, None, FPS, SR)
    vs, as_ = _clip(0.3)
    write_av_file(d / 'short.mp4', vs, as_, FPS, SR)
    return d


CASES = {  # file -> the case it must be classified as
    'missing.mp4': 'missing', 'truncated.mp4': 'corrupt', 'truncated_faststart.mp4': 'corrupt',
    'garbage.mp4': 'corrupt', 'empty.mp4': 'corrupt', 'noaudio.mp4': 'no_audio', 'short.mp4': 'short'}


def _manifest(d, files, name, duration=False):
    p = d / name
    with open(p, 'w', newline='') as fh:
        w = csv.writer(fh); w.writerow(['path', 'label', 'narration'] + (['duration'] if duration else []))
        for i, f in enumerate(files): w.writerow([f, i, f'clip {f}'] + (['2.0'] if duration else []))
    return p


def test_good_file_roundtrip(media):
    info = probe(media / 'good.mp4')
    assert info['has_audio'] and abs(info['duration'] - 2.0) < 1e-3 and info['n_frames'] == 32
    v, a = _clip(2.0)
    c = read_clip(media / 'good.mp4', 0.5, 1.0, fps=FPS, sample_rate=SR)
    ref = torch.from_numpy(v[8:24]).permute(3, 0, 1, 2).float() / 255
    assert c['video'].shape == (3, 16, 32, 32) and (c['video'] - ref).abs().mean() < 0.02
    ref_a = torch.from_numpy(a[8000:24000])
    assert c['audio'].shape == (16000,) and torch.corrcoef(torch.stack([c['audio'], ref_a]))[0, 1] > 0.9
    c8 = read_clip(media / 'good.mp4', 0, 2.0, fps=8, sample_rate=8000, size=(16, 24))
    assert c8['video'].shape == (3, 16, 16, 24) and c8['audio'].shape == (16000,)


@pytest.mark.parametrize('fname,case', sorted(CASES.items()))
def test_read_clip_classifies(media, fname, case):
    with pytest.raises(ERRORS[case]) as e:
        read_clip(media / fname, 0, D, fps=FPS, sample_rate=SR)
    assert fname in str(e.value) and e.value.case == case and isinstance(e.value, MediaError)
    assert isinstance(e.value, RuntimeError)


@pytest.mark.parametrize('with_duration', [False, True])
@pytest.mark.parametrize('policy', POLICIES)
@pytest.mark.parametrize('fname,case', sorted(CASES.items()))
def test_policy(media, fname, case, policy, with_duration):
    man = _manifest(media, [fname], f'm_{fname}_{policy}_{with_duration}.csv', duration=with_duration)
    ds = ManifestDataset(man, clip_duration=D, fps=FPS, sample_rate=SR, mode='eval', on_error=policy)
    if policy == 'raise':
        with pytest.raises(ERRORS[case]) as e: ds[0]
        assert fname in str(e.value)
        assert ds.error_counts[case] == 1
        return
    item = ds[0]
    assert ds.error_counts == {c: int(c == case) for c in MEDIA_CASES}
    if policy == 'skip' or case in ('missing', 'corrupt'):
        assert item is None and ds.action_counts == dict(skipped=1, silenced=0, padded=0)
        return
    action = 'silenced' if policy == 'silence' else 'padded'
    assert item['media_status'] == action and ds.action_counts[action] == 1 and ds.action_counts['skipped'] == 0
    assert item['video'].shape == (3, 16, 32, 32) and item['audio'].shape == (16000,)
    assert torch.isfinite(item['video']).all() and torch.isfinite(item['audio']).all()
    assert item['label'] == 0 and item['narration'] == f'clip {fname}'
    if case == 'no_audio':
        assert torch.equal(item['audio'], torch.zeros(16000)) and item['video'].mean() > 0.05
    else:  # short: 0.3 s of 1 s are real (5 frames at 16 fps)
        v, a = item['video'], item['audio']
        assert v[:, :5].mean() > 0.05 and a[:4000].abs().mean() > 0.1
        assert a[5500:].abs().max() == 0
        if policy == 'silence': assert v[:, 6:].abs().max() == 0
        else: assert torch.equal(v[:, 6:], v[:, 4:5].expand_as(v[:, 6:])) and v[:, 6:].mean() > 0.05


def test_mixed_dataset_counts_with_workers(media):
    files = ['good.mp4', 'missing.mp4', 'garbage.mp4', 'noaudio.mp4', 'short.mp4', 'truncated.mp4']
    ds = ManifestDataset(_manifest(media, files, 'mixed.csv'), clip_duration=D, fps=FPS, sample_rate=SR,
                         clips_per_video=2, mode='train', on_error='skip', seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_skip)
    n = sum(len(b['video']) for b in loader if b)
    assert n == 2                                                            # only good.mp4's two clips survive
    assert ds.error_counts == dict(missing=2, corrupt=4, no_audio=2, short=2), ds.error_counts
    assert ds.action_counts['skipped'] == 10
    ds.reset_error_counts(); assert sum(ds.error_counts.values()) == 0
    pad = ManifestDataset(_manifest(media, files, 'mixed.csv'), clip_duration=D, fps=FPS, sample_rate=SR, on_error='pad')
    batch = collate_skip([pad[i] for i in range(len(pad))])
    assert batch['video'].shape == (3, 3, 16, 32, 32) and batch['media_status'] == ['ok', 'padded', 'padded']


def test_eval_clips_and_time_hooks(media):
    ds = ManifestDataset(_manifest(media, ['good.mp4'], 'one.csv'), clip_duration=0.5, fps=FPS, sample_rate=SR,
                         clips_per_video=4, mode='eval', time_shift_s=0.5, reverse=True)
    starts = [ds[i]['start_s'] for i in range(4)]
    assert np.allclose(starts, [0, 1 / 3, 2 / 3, 1.0])                    # room = 2 - 0.5 - 0.5 = 1 s
    it = ds[3]
    assert it['start_s_shift'] == 1.5 and torch.equal(it['video_shift_reversed'], it['video_shift'].flip(1))
    later = ds.load(0, 1.5)
    assert torch.equal(later['video'], it['video_shift'])
    with pytest.raises(ShortClipError): ds.load(0, 1.8)


def test_write_errors(tmp_path):
    v, a = _clip(0.5)
    for bad in (dict(video=v[..., 0]), dict(video=v.astype(float)), dict(video=v[:, :31]), dict(audio=a[None]),
                dict(audio=np.full(10, np.nan, np.float32))):
        kw = dict(video=v, audio=a, fps=FPS, sample_rate=SR) | bad
        with pytest.raises((ValueError, TypeError)): write_av_file(tmp_path / 'x.mp4', **kw)


def test_persistent_workers_follow_set_epoch(media):
    "Random clip starts change per epoch also when DataLoader workers persist across epochs (set_epoch is shared)."
    ds = ManifestDataset(_manifest(media, ['good.mp4'] * 4, 'four.csv', duration=True), clip_duration=0.5, fps=FPS,
                         sample_rate=SR, mode='train', seed=0, audio=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True, collate_fn=collate_skip)
    starts = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        starts.append(torch.cat([b['start_s'] for b in loader]).tolist())
    ref = []
    for epoch in range(3):                                  # the same draws made in this process
        ds.set_epoch(epoch); ref.append([ds[i]['start_s'] for i in range(4)])
    assert np.allclose(starts, ref) and starts[0] != starts[1] != starts[2]
    import copy, pickle
    ds.set_epoch(5)
    assert copy.deepcopy(ds).epoch == 5 and pickle.loads(pickle.dumps(ds)).epoch == 5
