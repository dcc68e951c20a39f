"""Video IO with av: 25 fps resampling by nearest timestamp, 16 kHz mono audio, mp4 writing, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from media import corrupt, speech_like

from flowvq.data.video import MediaError, iter_frames, probe, read_audio, read_video, write_audio, write_video


def numbered(count: int, size: int = 32) -> np.ndarray:
    """Frames that show their index in binary: 8 vertical bars, white for a 1 bit (robust to H.264)."""
    frames = np.zeros((count, size, size, 3), dtype=np.uint8)
    bar = size // 8
    for index in range(count):
        for bit in range(8):
            if index >> bit & 1:
                frames[index, :, bit * bar : (bit + 1) * bar] = 255
    return frames


def decoded_index(frames: np.ndarray) -> np.ndarray:
    bar = frames.shape[2] // 8
    bits = [frames[:, 4:-4, b * bar + 1 : (b + 1) * bar - 1].mean((1, 2, 3)) > 127 for b in range(8)]
    return sum(bit.astype(int) << b for b, bit in enumerate(bits))


@pytest.mark.parametrize("source_fps", [25.0, 30.0, 50.0, 24.0])
def test_resampling_to_25_fps_picks_the_nearest_frame(tmp_path, source_fps):
    count = int(source_fps * 2)  # two seconds
    path = write_video(tmp_path / "v.mp4", numbered(count), source_fps, crf=0)
    frames = read_video(path)
    assert frames.dtype == np.uint8 and frames.shape[1:] == (32, 32, 3)
    assert len(frames) == 50
    expected = np.minimum(np.round(np.arange(50) / 25.0 * source_fps + 1e-9).astype(int), count - 1)
    np.testing.assert_array_equal(decoded_index(frames), expected)
    info = probe(path)
    assert (info.width, info.height, info.num_frames, info.has_audio) == (32, 32, 50, False)
    assert info.source_fps == pytest.approx(source_fps)


def test_audio_round_trip_through_mp4_and_m4a(tmp_path):
    speech = speech_like(1.0, seed=3)
    video = write_video(tmp_path / "a.mp4", numbered(25), 25.0, audio=speech)
    m4a = write_audio(tmp_path / "a.m4a", speech)
    for path in (video, m4a):
        audio = read_audio(path)
        assert audio.dtype == np.float32 and abs(len(audio) - len(speech)) < 2048  # AAC pads to whole frames
        # AAC delays by its priming samples; align and compare
        lag = int(np.argmax(np.correlate(audio[:4000], speech[:2000], mode="valid")))
        aligned = audio[lag : lag + 12000]
        assert np.corrcoef(aligned, speech[: len(aligned)])[0, 1] > 0.95
    assert read_audio(m4a, sample_rate=8000).shape[0] == pytest.approx(8000, abs=1100)  # resampled


def test_stereo_44k_is_mixed_down_and_resampled(tmp_path):
    import av

    path = tmp_path / "stereo.m4a"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "stereo"
        t = np.arange(44100) / 44100
        tone = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)]).astype(np.float32) * 0.3
        for start in range(0, tone.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(tone[:, start : start + 1024]), format="fltp", layout="stereo"
            )
            frame.sample_rate = 44100
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    audio = read_audio(path)
    assert audio.ndim == 1 and abs(len(audio) - 16000) < 1100
    spectrum = np.abs(np.fft.rfft(audio[2000:10000]))
    assert np.argmax(spectrum) * 16000 / 8000 == pytest.approx(440, abs=4)


def test_in_memory_source(tmp_path):
    path = write_video(tmp_path / "v.mp4", numbered(10), 25.0)
    data = io.BytesIO(path.read_bytes())
    data.name = "member.mp4"
    assert len(list(iter_frames(data))) == 10
    assert len(read_video(data)) == 10  # re-read from the start


def test_unreadable_files_raise_clear_errors(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
    bad = corrupt(tmp_path / "bad.mp4")
    with pytest.raises(MediaError, match="bad.mp4.*not a readable media file"):
        read_video(bad)
    silent = write_video(tmp_path / "silent.mp4", numbered(5), 25.0)
    with pytest.raises(MediaError, match="has no audio stream"):
        read_audio(silent)
    sound = write_audio(tmp_path / "sound.m4a", speech_like(0.5))
    with pytest.raises(MediaError, match="has no video stream"):
        read_video(sound)
    # a truncated file: the header survives, most frames do not
    full = write_video(
        tmp_path / "full.mp4", np.random.default_rng(0).integers(0, 255, (50, 64, 64, 3), dtype=np.uint8)
    )
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    with pytest.raises(MediaError, match="cut.mp4"):
        frames = read_video(cut)
        assert len(frames) == 50  # if the decoder does not notice, the frames must not all be there


def test_write_video_checks_its_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), dtype=np.float32))
    odd = write_video(tmp_path / "odd.mp4", numbered(3, size=31))
    assert read_video(odd).shape == (3, 32, 32, 3)  # padded to even sides for yuv420
