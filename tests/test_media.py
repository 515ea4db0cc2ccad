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


# --- unusual timing, rotation, truncation: files made with PyAV directly (not with write_av_file) ---------------------
import pickle
from fractions import Fraction
import av
from avlearn.media import AudioGapError

TB = Fraction(1, 90000)


def _bars(T, H=32, W=48):
    "Frame t has a white bar 1 + t pixels wide: a frame's width tells which frame it is."
    v = np.zeros((T, H, W, 3), np.uint8)
    for t in range(T): v[t, :, :t + 1] = 255
    return v


def _burst(seconds, at=(0.5, 0.75), sr=SR):
    "Silence with a 440 Hz burst during `at` (seconds after the audio's own start)."
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.5 * np.sin(2 * np.pi * 440 * t) * ((t >= at[0]) & (t < at[1]))).astype(np.float32)


def _write_raw(path, fmt, video, audio=None, v_start=0., a_start=0., rotation=0, acodec='aac'):
    "Encode with PyAV and mux the packets in time order (interleaved, as real files are)."
    with av.open(str(path), 'w', format=fmt) as c:
        vs = c.add_stream('libx264', rate=FPS)
        vs.height, vs.width = video.shape[1:3]; vs.pix_fmt = 'yuv420p'; vs.options = {'threads': '1'}
        vs.codec_context.time_base = TB
        if rotation: vs.set_display_rotation(rotation)
        ast = c.add_stream(acodec, rate=SR, layout='mono') if audio is not None else None
        packets = []
        for t, img in enumerate(video):
            f = av.VideoFrame.from_ndarray(img, format='rgb24').reformat(format='yuv420p')
            f.pts, f.time_base = int(round((v_start + t / FPS) / TB)), TB
            packets += vs.encode(f)
        packets += vs.encode()
        if ast is not None:
            pcm = acodec.startswith('pcm')
            for i in range(0, len(audio), 1024):
                x = audio[None, i:i + 1024]
                x = (x * 32767).round().astype(np.int16) if pcm else np.ascontiguousarray(x)
                f = av.AudioFrame.from_ndarray(x, format='s16' if pcm else 'fltp', layout='mono')
                f.sample_rate, f.pts, f.time_base = SR, int(round(a_start * SR)) + i, Fraction(1, SR)
                packets += ast.encode(f)
            packets += ast.encode()
        for p in sorted(packets, key=lambda p: float(p.dts * p.time_base)): c.mux(p)
    return path


def _widths(clip): return (clip['video'][0, :, 16] > 0.5).sum(-1).tolist()


def _burst_at(audio, sr=SR):
    "Where the burst starts and ends in a decoded window, in seconds."
    on = np.flatnonzero(audio.abs().unfold(0, sr // 200, sr // 200).max(-1).values.numpy() > 0.2)
    return on[0] / 200, (on[-1] + 1) / 200


@pytest.mark.parametrize('fmt,ext', [('mp4', 'mp4'), ('mpegts', 'ts'), ('matroska', 'mkv')])
def test_streams_starting_late_read_the_right_frames(tmp_path, fmt, ext):
    "A file whose clock starts at 1.47 s (MPEG-TS style): t = 0 is its first frame, frames and sound in sync."
    p = _write_raw(tmp_path / f'offset.{ext}', fmt, _bars(32), _burst(2.0), v_start=1.47, a_start=1.47)
    info = probe(p)
    assert abs(info['start_time'] - 1.47) < 0.01 and abs(info['duration'] - 2.0) < 0.1, info
    for start in (0., 0.5, 1.0):
        c = read_clip(p, start, 1.0, fps=FPS, sample_rate=SR)
        first = int(round(start * FPS))
        assert _widths(c) == list(range(first + 1, first + 17)) and c['n_valid_frames'] == 16
        assert c['n_valid_samples'] == 16000
        if start == 0.: assert np.allclose(_burst_at(c['audio']), (0.5, 0.75), atol=0.01)   # at 0.5 s: in sync
        if start == 0.5: assert np.allclose(_burst_at(c['audio']), (0.0, 0.25), atol=0.01)
        if start == 1.0: assert c['audio'].abs().max() < 0.05
    with pytest.raises(ShortClipError): read_clip(p, 1.5, 1.0, fps=FPS)


@pytest.fixture(scope='module')
def late(tmp_path_factory):
    "Video 0-2 s; PCM audio only from 1.0 s to 2.0 s, with a burst at 1.5-1.75 s on the video's clock."
    d = tmp_path_factory.mktemp('late')
    _write_raw(d / 'late.mov', 'mov', _bars(32), _burst(1.0), a_start=1.0, acodec='pcm_s16le')
    _write_raw(d / 'early_end.mov', 'mov', _bars(32), _burst(1.0), a_start=0.0, acodec='pcm_s16le')
    return d


def test_late_audio_is_read_in_sync_and_gaps_are_declared(late):
    info = probe(late / 'late.mov')
    assert abs(info['audio_offset'] - 1.0) < 1e-3 and abs(info['audio_duration'] - 1.0) < 1e-3
    c = read_clip(late / 'late.mov', 1.0, 1.0, fps=FPS, sample_rate=SR)          # a window the audio covers: fine
    assert c['n_valid_samples'] == 16000 and np.allclose(_burst_at(c['audio']), (0.5, 0.75), atol=0.01)
    c8 = read_clip(late / 'late.mov', 1.25, 0.5, fps=FPS, sample_rate=8000)       # resampled: the burst still in place
    assert np.allclose(_burst_at(c8['audio'], 8000), (0.25, 0.5), atol=0.01)
    with pytest.raises(AudioGapError) as e: read_clip(late / 'late.mov', 0.5, 1.0, fps=FPS)
    assert isinstance(e.value, ShortClipError) and e.value.case == 'short' and 'audio covers 0.500 s' in str(e.value)
    part = read_clip(late / 'late.mov', 0.5, 1.0, fps=FPS, sample_rate=SR, allow_short=True)
    assert part['n_valid_samples'] == 8000 and part['audio'][:8000].abs().max() == 0
    assert part['n_valid_frames'] == 16 and _widths(part) == list(range(9, 25))
    # audio that ends early: a window past its end, at another sample rate, is a gap too (it used to crash in resample)
    for sr in (SR, 8000):
        with pytest.raises(AudioGapError): read_clip(late / 'early_end.mov', 1.2, 0.5, fps=FPS, sample_rate=sr)
        empty = read_clip(late / 'early_end.mov', 1.2, 0.5, fps=FPS, sample_rate=sr, allow_short=True)
        assert empty['n_valid_samples'] == 0 and empty['audio'].abs().max() == 0 and empty['audio'].shape == (sr // 2,)


@pytest.mark.parametrize('policy', POLICIES)
@pytest.mark.parametrize('fname', ['late.mov', 'early_end.mov'])
def test_audio_gaps_follow_the_policy_and_are_counted(late, fname, policy):
    man = late / f'm_{fname}_{policy}.csv'
    man.write_text(f'path,label\n{fname},0\n')
    ds = ManifestDataset(man, clip_duration=0.5, fps=FPS, sample_rate=8000, mode='eval', on_error=policy)
    start = 0.75 if fname == 'late.mov' else 1.2                     # late: half the window has audio; early_end: none
    if policy == 'raise':
        with pytest.raises(AudioGapError): ds.load(0, start)
    else:
        clip = ds.load(0, start)
        if policy == 'skip': assert clip is None and ds.action_counts['skipped'] == 1
        else:
            status = 'silenced' if policy == 'silence' else 'padded'
            assert clip['media_status'] == status and ds.action_counts[status] == 1 and clip['start_s'] == start
            assert clip['audio'].shape == (4000,) and clip['video'].shape == (3, 8, 32, 48)
            if fname == 'late.mov':                                  # zeros before 1.0 s, the real audio after it
                assert clip['audio'][:2000].abs().max() == 0 and clip['n_valid_samples'] == 2000
            else: assert clip['audio'].abs().max() == 0 and clip['n_valid_samples'] == 0
    assert ds.error_counts == dict(missing=0, corrupt=0, no_audio=0, short=1)
    # a whole epoch in DataLoader workers under 'skip' ends normally however the windows fall
    ds = ManifestDataset(man, clip_duration=0.5, fps=FPS, sample_rate=8000, clips_per_video=8, mode='train', seed=0,
                         on_error='skip' if policy == 'raise' else policy)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_skip)
    n = sum(len(b.get('video', [])) for b in loader)
    assert n + ds.action_counts['skipped'] == 8


@pytest.mark.parametrize('rotation', [90, -90, 180])
def test_rotation_is_applied_or_reported(tmp_path, rotation):
    upright = _bars(16, 48, 32)                                          # a portrait picture (48 x 32) as displayed
    stored = np.ascontiguousarray(np.rot90(upright, -rotation // 90, axes=(1, 2)))
    p = _write_raw(tmp_path / 'phone.mp4', 'mp4', stored, rotation=rotation)
    info = probe(p)
    assert info['rotation'] % 360 == rotation % 360 and (info['height'], info['width']) == stored.shape[1:3]
    c = read_clip(p, 0, 1.0, fps=FPS, audio=False)
    ref = torch.from_numpy(upright).permute(3, 0, 1, 2).float() / 255
    assert c['rotation'] == info['rotation'] and c['video'].shape == (3, 16, 48, 32)
    assert (c['video'] - ref).abs().mean() < 0.02
    small = read_clip(p, 0, 1.0, fps=FPS, audio=False, size=16)               # size is of the upright picture
    assert small['video'].shape == (3, 16, 24, 16)
    raw = read_clip(p, 0, 1.0, fps=FPS, audio=False, rotate=False)
    assert raw['video'].shape[2:] == stored.shape[1:3] and raw['rotation'] == c['rotation']


def test_truncated_unusual_files_are_classified_and_skipped(tmp_path):
    ts = _write_raw(tmp_path / 'offset.ts', 'mpegts', _bars(32), _burst(2.0), v_start=1.47, a_start=1.47)
    raw = ts.read_bytes(); (tmp_path / 'cut.ts').write_bytes(raw[:len(raw) // 2])
    mp4 = _write_raw(tmp_path / 'offset.mp4', 'mp4', _bars(32), _burst(2.0), v_start=1.47, a_start=1.47)
    raw = mp4.read_bytes(); (tmp_path / 'cut.mp4').write_bytes(raw[:len(raw) // 2])   # the index (at the end) is lost
    cases = {}
    for f in ('cut.ts', 'cut.mp4'):
        with pytest.raises(MediaError) as e: read_clip(tmp_path / f, 0.9, 1.0, fps=FPS)
        cases[f] = e.value.case
    assert cases == {'cut.ts': 'short', 'cut.mp4': 'corrupt'}, cases   # a cut TS has no index: it just looks shorter
    (tmp_path / 'm.csv').write_text('path,label\ncut.ts,0\ncut.mp4,1\n')
    ds = ManifestDataset(tmp_path / 'm.csv', clip_duration=1.0, fps=FPS, clips_per_video=4, on_error='skip', seed=0)
    items = [ds[i] for i in range(len(ds))]
    assert all(it is None for it in items[4:])
    assert ds.action_counts['skipped'] + sum(it is not None for it in items) == 8


@pytest.mark.parametrize('cls', [MediaError, MissingMediaError, CorruptMediaError, NoAudioError, ShortClipError,
                                 AudioGapError])
def test_media_errors_pickle_with_type_path_and_case(cls):
    e = cls("/data/a: b's clip.mp4", 'a problem: with colons')
    back = pickle.loads(pickle.dumps(e))
    assert (type(back), back.path, back.case, back.problem, str(back)) == (cls, e.path, e.case, e.problem, str(e))


def test_worker_errors_are_caught_as_media_errors_with_path_and_case(media):
    "DataLoader workers re-raise in the main process by type(traceback text): path and case survive."
    for fname, cls in [('missing.mp4', MissingMediaError), ('short.mp4', ShortClipError),
                       ('garbage.mp4', CorruptMediaError)]:
        ds = ManifestDataset(_manifest(media, [fname] * 4, f'w_{fname}.csv'), clip_duration=D, fps=FPS, sample_rate=SR)
        batches = iter(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_skip))
        with pytest.raises(MediaError) as e: next(batches)
        e = e.value.with_traceback(None)                           # the traceback holds the iterator: free it
        del batches                                                # (its workers shut down at once)
        assert type(e) is cls and e.path == str(media / fname) and e.case == cls.case, (type(e), e.path)
        assert 'DataLoader worker' in str(e)                       # the worker's traceback is kept in the message
