"""Manifest builders on small fake trees of real toy-world mp4 files, and the pre-resize tool on awkward inputs."""
import csv, fractions, json, os, shutil, subprocess, sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from avlearn.data import ToyWorld, ToyWorldConfig, export_clips
from avlearn.media import probe, read_clip, MissingMediaError
from avlearn.datasets import (ManifestFormatError, VideoIndex, kinetics_manifest, vggsound_manifest, audioset_manifest,
                              audioset_classes, howto100m_manifest, multi_hot, write_manifest, resize_video,
                              resize_videos, KINETICS_COLUMNS)


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    "Six real H.264 + AAC toy-world clips (16 frames, 64x64, 1 s of 16 kHz audio) and the world they came from."
    d = tmp_path_factory.mktemp('toy')
    world = ToyWorld(ToyWorldConfig(n_frames=16, size=64, fps=16., sample_rate=16000), n=6, seed=1)
    export_clips(world, d)
    return world, sorted(d.glob('*.mp4'))


def _place(files, i, dst):
    dst = Path(dst); dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(files[i % len(files)], dst)
    return dst


def _rows(path):
    with open(path, newline='', encoding='utf-8') as fh: return list(csv.DictReader(fh))


def test_kinetics_csv_and_tree_agree_and_mapping_is_stable(toy, tmp_path):
    world, files = toy
    classes = ['zumba', 'bowling', 'archery']
    lines = ['label,youtube_id,time_start,time_end,split']
    for k, c in enumerate(classes):
        for j in range(2):
            yid = f'{c[:3]}_{j}-x'
            lines.append(f'{c},{yid},{10 * j},{10 * j + 10},train')
            _place(files, k * 2 + j, tmp_path / 'train' / c / f'{yid}_{10 * j:06d}_{10 * j + 10:06d}.mp4')
    (tmp_path / 'train.csv').write_text('\n'.join(lines) + '\n')
    a = kinetics_manifest(tmp_path, tmp_path / 'train.csv', split='train', out=tmp_path / 'a.csv')
    b = kinetics_manifest(tmp_path, split='train', out=tmp_path / 'b.csv')
    ra, rb = _rows(a.manifest), _rows(b.manifest)
    assert a.classes == b.classes == ('archery', 'bowling', 'zumba')
    assert sorted((r['path'], r['label']) for r in ra) == sorted((r['path'], r['label']) for r in rb)
    assert {r['youtube_id'] for r in rb} == {r['youtube_id'] for r in ra}      # parsed back out of the file names
    # deleting every archery clip must not shift the other labels when the CSV defines the classes
    shutil.rmtree(tmp_path / 'train' / 'archery')
    c = kinetics_manifest(tmp_path, tmp_path / 'train.csv', split='train', out=tmp_path / 'c.csv')
    assert c.n_missing == 2 and c.n_rows == 4
    assert {r['label_name']: r['label'] for r in _rows(c.manifest)} == {'bowling': '1', 'zumba': '2'}
    # an explicit class list pins the mapping
    d = kinetics_manifest(tmp_path, tmp_path / 'train.csv', split='train', out=tmp_path / 'd.csv',
                          classes=['zumba', 'bowling', 'archery'])
    assert {r['label_name']: r['label'] for r in _rows(d.manifest)} == {'bowling': '1', 'zumba': '0'}
    with pytest.raises(ValueError, match='classes has no entry'):
        kinetics_manifest(tmp_path, tmp_path / 'train.csv', split='train', out=tmp_path / 'e.csv', classes=['zumba'])


def test_kinetics_flat_layout_other_extension_and_unlabelled_test_split(toy, tmp_path):
    _, files = toy
    _place(files, 0, tmp_path / 'test' / 'aaa_000001_000011.mkv')
    (tmp_path / 'test.csv').write_text('youtube_id,time_start,time_end,split\naaa,1,11,test\nbbb,2,12,test\n')
    rep = kinetics_manifest(tmp_path, tmp_path / 'test.csv', split='test')
    rows = _rows(rep.manifest)
    assert rep.n_rows == 1 and rep.missing == ['test/bbb_000002_000012']
    assert rows[0]['path'] == 'test/aaa_000001_000011.mkv' and rows[0]['label'] == '-1'
    with pytest.raises(ValueError, match="split 'val' has no rows"):
        kinetics_manifest(tmp_path, tmp_path / 'test.csv', split='val')
    with pytest.raises(FileNotFoundError, match='annotations'):
        kinetics_manifest(tmp_path, tmp_path / 'nope.csv')


def test_vggsound_header_line_and_quoted_labels(toy, tmp_path):
    _, files = toy
    (tmp_path / 'vggsound.csv').write_text('# YouTube ID,start seconds,label,train/test split\n'
                                           '-a_b-c,5,"dog barking, growling",train\n-zz,7,cat purring,train\n')
    _place(files, 0, tmp_path / '-a_b-c_000005.mp4')
    rep = vggsound_manifest(tmp_path, tmp_path / 'vggsound.csv', drop_missing=False)
    rows = _rows(rep.manifest)
    assert rep.classes == ('cat purring', 'dog barking, growling') and rep.n_rows == 2 and rep.missing == ['-zz_000007']
    assert [(r['label'], r['youtube_id'], r['yt_window']) for r in rows] == [('1', '-a_b-c', '5-15'), ('0', '-zz', '7-17')]


def test_audioset_labels_csv_errors_and_multi_hot(tmp_path):
    (tmp_path / 'labels.csv').write_text('index,mid,display_name\n0,/m/a,"A"\n2,/m/b,"B"\n')
    with pytest.raises(ManifestFormatError, match=r'labels.csv:3: index must count up'):
        audioset_classes(tmp_path / 'labels.csv')
    (tmp_path / 'labels.csv').write_text('index,mid,display_name\n0,/m/a,"A"\n1,/m/b,"B, b"\n')
    assert audioset_classes(tmp_path / 'labels.csv') == [(0, '/m/a', 'A'), (1, '/m/b', 'B, b')]
    (tmp_path / 'seg.csv').write_text('# a\n# b\n# YTID, start_seconds, end_seconds, positive_labels\nxx, 4.0, 2.0, "/m/a"\n')
    with pytest.raises(ManifestFormatError, match=r'seg.csv:4: need 0 <= start_seconds < end_seconds'):
        audioset_manifest(tmp_path, tmp_path / 'seg.csv', tmp_path / 'labels.csv')
    y = multi_hot([1, 0, 1], 3)
    assert y.dtype == torch.float32 and y.tolist() == [1., 1., 0.]
    with pytest.raises(ValueError, match='space-separated'): multi_hot('1,2', 3)


def test_howto100m_selected_videos(toy, tmp_path):
    _, files = toy
    caps = {'v1': {'start': [0, 1.5], 'end': [1.5, 3], 'text': ['one', 'two']}, 'v2': {'start': [0], 'end': [1], 'text': ['x']}}
    (tmp_path / 'caption.json').write_text(json.dumps(caps))
    _place(files, 0, tmp_path / 'v1.mp4'); _place(files, 1, tmp_path / 'v2.mp4')
    rep = howto100m_manifest(tmp_path, tmp_path / 'caption.json', video_ids=['v1'])
    assert rep.n_rows == 2 and rep.notes['videos'] == 1 and {r['video_id'] for r in _rows(rep.manifest)} == {'v1'}
    with pytest.raises(KeyError, match='v3'):
        howto100m_manifest(tmp_path, tmp_path / 'caption.json', video_ids=['v3'])
    (tmp_path / 'list.json').write_text('[1, 2]')
    with pytest.raises(ManifestFormatError, match='expected an object'):
        howto100m_manifest(tmp_path, tmp_path / 'list.json')


def test_video_index_prefers_the_named_folder(toy, tmp_path):
    _, files = toy
    _place(files, 0, tmp_path / 'a' / 'clip.mp4'); _place(files, 1, tmp_path / 'b' / 'clip.mp4')
    idx = VideoIndex(tmp_path)
    assert idx.find(['clip'], prefer=('b',)) == 'b/clip.mp4' and idx.find(['clip']) == 'a/clip.mp4'


def _write_raw(path, size, n_frames, pts, time_base=fractions.Fraction(1, 1000)):
    "A video-only mp4 written directly with PyAV with frame timestamps `pts` (in `time_base`): a variable frame rate."
    h, w = size
    with av.open(str(path), 'w', format='mp4') as c:
        vs = c.add_stream('libx264', rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, 'yuv420p'
        vs.codec_context.time_base = time_base
        for t in range(n_frames):
            img = np.full((h, w, 3), 40, np.uint8); img[:, (t * 7) % w:(t * 7) % w + 8] = 220
            f = av.VideoFrame.from_ndarray(img, format='rgb24').reformat(format='yuv420p')
            f.pts, f.time_base = pts[t], time_base
            for p in vs.encode(f): c.mux(p)
        for p in vs.encode(): c.mux(p)
    return path


def _write_av(path, size, seconds, fps, channels, sample_rate):
    "An mp4 with H.264 video and AAC audio with `channels` channels at `sample_rate`, both streams added up front."
    h, w = size
    n = int(seconds * fps); S = int(seconds * sample_rate)
    t = np.arange(S) / sample_rate
    wave = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * ch) * t) for ch in range(channels)]).astype(np.float32)
    with av.open(str(path), 'w', format='mp4') as c:
        vs = c.add_stream('libx264', rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, 'yuv420p'
        ast = c.add_stream('aac', rate=sample_rate, layout='mono' if channels == 1 else 'stereo')
        for i in range(n):
            img = np.full((h, w, 3), 30, np.uint8); img[:, (i * 5) % w:(i * 5) % w + 6] = 200
            f = av.VideoFrame.from_ndarray(img, format='rgb24').reformat(format='yuv420p'); f.pts = i
            for p in vs.encode(f): c.mux(p)
        for p in vs.encode(): c.mux(p)
        af = av.AudioFrame.from_ndarray(wave, format='fltp', layout='mono' if channels == 1 else 'stereo')
        af.sample_rate, af.pts = sample_rate, 0
        for p in ast.encode(af): c.mux(p)
        for p in ast.encode(): c.mux(p)
    return path


def test_resize_keeps_stereo_sample_rate_aspect_and_duration(tmp_path):
    src = _write_av(tmp_path / 'wide.mp4', (96, 160), 1.0, 25, 2, 44100)
    info = resize_video(src, tmp_path / 'out' / 'wide.mp4', short_side=64)
    p0, p1 = probe(src), probe(tmp_path / 'out' / 'wide.mp4')
    assert (p1['height'], p1['width']) == (64, 106) == (info['height'], info['width'])   # 160 * 64 / 96 = 106.7 -> even 106
    assert p1['channels'] == 2 and p1['sample_rate'] == 44100 and p1['audio_codec'] == 'aac'
    assert p1['n_frames'] == p0['n_frames'] == 25 and abs(p1['duration'] - p0['duration']) < 1e-6
    assert abs(p1['audio_duration'] - p0['audio_duration']) < 1e-3
    a, b = read_clip(src, 0.2, 0.5, sample_rate=44100), read_clip(tmp_path / 'out' / 'wide.mp4', 0.2, 0.5, sample_rate=44100)
    assert (a['audio'] - b['audio']).abs().mean() < 0.01                       # same sound at the same time


def test_resize_keeps_variable_frame_timestamps_and_video_only(tmp_path):
    pts = [0, 40, 80, 200, 240, 500, 540, 580, 900, 940]                      # gaps: a variable frame rate, in ms
    src = _write_raw(tmp_path / 'vfr.mp4', (80, 64), len(pts), pts=pts)
    resize_video(src, tmp_path / 'vfr_small.mp4', short_side=32)
    def times(p):
        with av.open(str(p)) as c: return [round(float(f.time), 3) for f in c.decode(video=0)]
    assert times(tmp_path / 'vfr_small.mp4') == times(src) == [x / 1000 for x in pts]
    p = probe(tmp_path / 'vfr_small.mp4')
    assert not p['has_audio'] and (p['height'], p['width']) == (40, 32)


def test_resize_videos_shared_files_broken_files_and_cli(toy, tmp_path):
    world, files = toy
    for i in range(3): _place(files, i, tmp_path / 'src' / f'v{i}.mp4')
    (tmp_path / 'src' / 'bad.mp4').write_bytes(os.urandom(3000))
    rows = [dict(path='v0.mp4', label=0), dict(path='v0.mp4', label=1), dict(path='v1.mp4', label=2),
            dict(path='bad.mp4', label=3), dict(path='gone.mp4', label=4), dict(path='v2.mp4', label=5)]
    m = write_manifest(rows, tmp_path / 'src' / 'm.csv', ['path', 'label'])
    env = {**os.environ, 'PYTHONPATH': str(Path(__file__).resolve().parents[1])}
    script = tmp_path / 'avlearn-resize'           # what the console-script entry point runs
    script.write_text('import sys\nfrom avlearn.datasets import resize_cli\nif __name__ == "__main__":\n    sys.exit(resize_cli())\n')
    r = subprocess.run([sys.executable, str(script), str(m),
                        str(tmp_path / 'dst'), '--short_side', '32', '--workers', '2'],
                       capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 1, r.stderr[-2000:]          # broken sources: a non-zero exit (issue 22 item 8; was 0)
    assert 'avlearn-resize: error: 2 of 5 source files are broken' in r.stderr
    assert 'resized 3 of 5 files' in r.stdout and '2 broken' in r.stdout and 'gone.mp4' in r.stdout, r.stdout
    out = _rows(tmp_path / 'dst' / 'm.csv')
    assert [(x['path'], x['label']) for x in out] == [('v0.mp4', '0'), ('v0.mp4', '1'), ('v1.mp4', '2'), ('v2.mp4', '5')]
    clip = read_clip(tmp_path / 'dst' / 'v1.mp4', 0., 1.)
    assert clip['video'].shape == (3, 16, 32, 32) and clip['audio'].shape == (16000,)
    with pytest.raises(FileNotFoundError, match='src_manifest'):
        resize_videos(tmp_path / 'none.csv', tmp_path / 'dst')
    with pytest.raises(ValueError, match='short_side'):
        resize_videos(m, tmp_path / 'dst2', short_side=33)


def test_manifests_read_back_with_manifest_dataset(toy, tmp_path):
    from avlearn.media import ManifestDataset
    from avlearn.datasets import MultiHot
    world, files = toy
    (tmp_path / 'train.csv').write_text('label,youtube_id,time_start,time_end,split\nbowling,b1,0,10,train\narchery,a1,0,10,train\n')
    _place(files, 0, tmp_path / 'train/bowling/b1_000000_000010.mp4')
    _place(files, 1, tmp_path / 'train/archery/a1_000000_000010.mp4')
    rep = kinetics_manifest(tmp_path, tmp_path / 'train.csv', split='train', probe_durations=True)
    ds = ManifestDataset(rep.manifest, clip_duration=0.5, fps=16., mode='eval', clips_per_video=2)
    assert ds.label_columns == ('label',) and len(ds) == 4
    items = [ds[i] for i in range(4)]
    assert [it['label'] for it in items] == [1, 1, 0, 0]                    # bowling > archery in sorted order
    assert [it['start_s'] for it in items] == [0., 0.5, 0., 0.5]          # a probed 1 s file: two eval windows
    want = world[0]['video'][:, 8:16]                                      # the second window of toy clip 0 ...
    assert items[1]['video'].shape == want.shape == (3, 8, 64, 64)
    assert (items[1]['video'] - want).abs().mean() < 0.05                 # ... decoded from the bowling file
    assert ds[0]['label_name'] == 'bowling' and ds[0]['yt_window'] == '0-10'
    # AudioSet: the multi-hot target through the MultiHot transform, in a DataLoader with 2 workers
    (tmp_path / 'labels.csv').write_text('index,mid,display_name\n0,/m/a,"A"\n1,/m/b,"B"\n2,/m/c,"C"\n')
    (tmp_path / 'seg.csv').write_text('# a\n# b\n# c\nxa, 0.0, 10.0, "/m/c,/m/a"\nxb, 0.0, 10.0, "/m/b"\n')
    _place(files, 2, tmp_path / 'aus/xa_000000_000010.mp4'); _place(files, 3, tmp_path / 'aus/xb_000000_000010.mp4')
    rep = audioset_manifest(tmp_path / 'aus', tmp_path / 'seg.csv', tmp_path / 'labels.csv')
    ds = ManifestDataset(rep.manifest, clip_duration=0.5, fps=8., transform=MultiHot(3), seed=0)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)))
    assert batch['labels'].tolist() == [[1., 0., 1.], [0., 1., 0.]] and batch['video'].shape == (2, 3, 4, 64, 64)


def _avi(world, i, dst):
    "Toy clip `i` as a real AVI (MPEG-4 part 2 + PCM), the format UCF-101 and HMDB-51 ship."
    r = world.render(i); dst = Path(dst); dst.parent.mkdir(parents=True, exist_ok=True)
    v = (r['video'] * 255).round().astype(np.uint8)
    with av.open(str(dst), 'w', format='avi') as c:
        vs = c.add_stream('mpeg4', rate=16); vs.width, vs.height, vs.pix_fmt = 64, 64, 'yuv420p'
        ast = c.add_stream('pcm_s16le', rate=16000, layout='mono')
        for t in range(len(v)):
            f = av.VideoFrame.from_ndarray(v[t], format='rgb24').reformat(format='yuv420p'); f.pts = t
            for p in vs.encode(f): c.mux(p)
        for p in vs.encode(): c.mux(p)
        af = av.AudioFrame.from_ndarray((r['audio'][None] * 32767).round().astype(np.int16), format='s16', layout='mono')
        af.sample_rate, af.pts = 16000, 0
        for p in ast.encode(af): c.mux(p)
        for p in ast.encode(): c.mux(p)
    return dst


def test_ucf101_avi_to_resized_mp4_and_manifest_cli(toy, tmp_path, capsys):
    from avlearn.datasets import ucf101_manifest, manifest_cli
    from avlearn.media import ManifestDataset
    world, _ = toy
    sd = tmp_path / 'ucfTrainTestlist'; sd.mkdir()
    (sd / 'classInd.txt').write_text('1 Basketball\n2 Biking\n')
    (sd / 'trainlist01.txt').write_text('Basketball/v_Basketball_g08_c01.avi 1\nBiking/v_Biking_g08_c01.avi 2\n')
    (sd / 'testlist01.txt').write_text('Biking/v_Biking_g01_c01.avi\n')
    for i, name in enumerate(['Basketball/v_Basketball_g08_c01', 'Biking/v_Biking_g08_c01', 'Biking/v_Biking_g01_c01']):
        _avi(world, i, tmp_path / 'UCF-101' / f'{name}.avi')
    rep = ucf101_manifest(tmp_path / 'UCF-101', sd, split=1, subset='train', out=tmp_path / 'train.csv')
    assert rep.n_rows == 2 and rep.classes == ('Basketball', 'Biking')
    res = resize_videos(rep.manifest, tmp_path / 'ucf32', short_side=32, progress=False)
    rows = _rows(res.manifest)
    assert [(r['path'], r['label'], r['duration']) for r in rows] == [
        ('UCF-101/Basketball/v_Basketball_g08_c01.mp4', '0', '1.000'), ('UCF-101/Biking/v_Biking_g08_c01.mp4', '1', '1.000')]
    p = probe(tmp_path / 'ucf32' / rows[1]['path'])
    assert (p['video_codec'], p['audio_codec'], p['height'], p['n_frames']) == ('h264', 'aac', 32, 16)
    ds = ManifestDataset(res.manifest, clip_duration=1.0, fps=16., mode='eval')
    assert ds[1]['label'] == 1 and ds[1]['video'].shape == (3, 16, 32, 32)
    # the same manifest through the command-line entry point (called with arguments, as call_parse allows)
    manifest_cli('ucf101', str(tmp_path / 'UCF-101'), str(sd), split='1/test', out=str(tmp_path / 'test.csv'))
    out = capsys.readouterr().out
    assert 'ucf101: 1 rows' in out and '0 missing' in out
    assert [r['label'] for r in _rows(tmp_path / 'test.csv')] == ['1']


def test_resize_verifies_outputs_truncated_rotated_and_offset_sources(toy, tmp_path):
    "Truncated sources are broken (non-zero exit, no row); rotated ones come out upright; offset ones stay in sync."
    from avlearn.media import write_av_file
    world, files = toy
    r = world.render(0); v = (r['video'] * 255).round().astype(np.uint8); a = r['audio']
    src = tmp_path / 'src'
    write_av_file(src / 'whole.mp4', v, a, fps=16, sample_rate=16000, faststart=True)
    with av.open(str(src / 'whole.mp4')) as c: pos = [p.pos for p in c.demux(video=0) if p.pos]
    raw = (src / 'whole.mp4').read_bytes(); (src / 'cut.mp4').write_bytes(raw[:pos[8]])   # header kept, 8 frames left
    portrait = np.ascontiguousarray(v[:, :, 16:48])                                   # 64 x 32, as displayed
    write_av_file(src / 'phone.mp4', np.ascontiguousarray(np.rot90(portrait, -1, axes=(1, 2))), a, fps=16,
                  sample_rate=16000, rotation=90)
    write_av_file(src / 'late.mp4', v, a[:8000], fps=16, sample_rate=16000, start_s=1.47, audio_offset_s=0.5)
    m = write_manifest([dict(path=p, label=i, duration='1') for i, p in enumerate(['whole.mp4', 'cut.mp4', 'phone.mp4',
                                                                                     'late.mp4'])], src / 'm.csv')
    assert read_clip(src / 'cut.mp4', 0., 0.4, audio=False)['n_valid_frames'] > 0       # it decodes: only lengths tell
    env = {**os.environ, 'PYTHONPATH': str(Path(__file__).resolve().parents[1])}
    script = tmp_path / 'avlearn-resize'
    script.write_text('import sys\nfrom avlearn.datasets import resize_cli\n'
                      'if __name__ == "__main__":\n    sys.exit(resize_cli())\n')
    run = subprocess.run([sys.executable, str(script), str(m), str(tmp_path / 'dst'), '--short_side', '32'],
                         capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 1 and 'cut.mp4' in run.stdout and 'truncated' in run.stdout, run.stderr[-2000:]
    rows = _rows(tmp_path / 'dst' / 'm.csv')
    assert [x['path'] for x in rows] == ['whole.mp4', 'phone.mp4', 'late.mp4']
    assert not (tmp_path / 'dst' / 'cut.mp4').exists()
    assert all(x['duration'] == '1.000' for x in rows)                       # measured on the outputs
    up = read_clip(tmp_path / 'dst' / 'phone.mp4', 0., 1., audio=False)
    assert probe(tmp_path / 'dst' / 'phone.mp4')['rotation'] == 0 and up['video'].shape == (3, 16, 64, 32)
    ref = torch.from_numpy(portrait).permute(3, 0, 1, 2).float() / 255
    assert (up['video'] - ref).abs().mean() < 0.03
    late_src, late_dst = (read_clip(d / 'late.mp4', 0.5, 0.5, allow_short=True) for d in (src, tmp_path / 'dst'))
    assert late_dst['n_valid_samples'] == late_src['n_valid_samples'] == 8000
    assert torch.corrcoef(torch.stack([late_src['audio'], late_dst['audio']]))[0, 1] > 0.9
    # a second run keeps the outputs, checks them against the sources' headers, and still reports the broken one
    again = resize_videos(m, tmp_path / 'dst', short_side=32, progress=False)
    assert (again.n_existing, again.n_broken, again.n_rows) == (3, 1, 3)
    # every source broken: no manifest, and the report says so
    write_manifest([dict(path='cut.mp4', label=0)], src / 'only_cut.csv')
    none = resize_videos(src / 'only_cut.csv', tmp_path / 'dst2', short_side=32, progress=False)
    assert none.manifest is None and none.n_rows == 0 and 'no manifest written' in repr(none)


def test_toyworld_cli_refuses_to_overwrite_without_force(tmp_path):
    cmd = [str(Path(sys.executable).parent / 'avlearn-toyworld'), '--out', str(tmp_path), '--n', '2', '--n_frames', '4',
           '--size', '16']
    env = {**os.environ, 'PYTHONPATH': str(Path(__file__).resolve().parents[1])}
    assert subprocess.run(cmd, capture_output=True, env=env).returncode == 0
    (tmp_path / 'manifest.csv').write_text('path,label\nmine.mp4,0\n')                # a manifest someone edited
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 1 and '--force' in r.stderr and 'Traceback' not in r.stderr
    assert (tmp_path / 'manifest.csv').read_text() == 'path,label\nmine.mp4,0\n'
    assert subprocess.run(cmd + ['--force'], capture_output=True, env=env).returncode == 0
    assert len(_rows(tmp_path / 'manifest.csv')) == 2


def test_one_write_manifest(tmp_path):
    "avlearn.evaluation uses datasets' writer: paths joined to video_root as given, or relative for the builders."
    import avlearn.evaluation as ev, avlearn.datasets as ds
    assert ev.write_manifest is ds.write_manifest
    rows = [dict(path='A/a.avi', label=0, class_name='A')]
    joined = write_manifest(rows, tmp_path / 'out' / 'j.csv', video_root=tmp_path / 'videos')
    rel = write_manifest(rows, tmp_path / 'out' / 'r.csv', video_root=tmp_path / 'videos', relative=True)
    assert joined.read_text().splitlines()[1] == f"{tmp_path / 'videos' / 'A/a.avi'},0,A"
    assert rel.read_text().splitlines()[1] == '../videos/A/a.avi,0,A'
    with pytest.raises(ValueError, match='rows is empty'): write_manifest([], tmp_path / 'e.csv', ['path'])
    (tmp_path / 'k.csv').write_text('label,youtube_id,time_start,time_end,split\nx,abc,0,10,train\n')
    (tmp_path / 'no_videos').mkdir()
    with pytest.raises(ValueError, match="kinetics: none of the 1 listed videos"):   # not an empty manifest
        kinetics_manifest(tmp_path / 'no_videos', tmp_path / 'k.csv', split='train')
