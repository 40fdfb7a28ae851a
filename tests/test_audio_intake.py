"""Bounded audio intake (korasr.runtime.audio): sizes checked from the header before decoding, a running cap for
headers that lie, truncation in every container, and no exception but AudioError for any mutation of a file."""

from __future__ import annotations

import io
import itertools
import struct
import time
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import soxr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from korasr.data.audio import wav_header
from korasr.runtime import chunk_bounds
from korasr.runtime.audio import AudioError, AudioLimits, read_audio, read_pcm_s16le

LIMITS = AudioLimits(max_seconds=20)


def encode(audio: np.ndarray, rate: int, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format=fmt, **kwargs)
    return buffer.getvalue()


def speechlike(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32) / 2


def kind(data: bytes, limits: AudioLimits = LIMITS) -> str:
    try:
        read_audio(io.BytesIO(data), "x", limits)
    except AudioError as e:
        return e.kind
    return "ok"


def test_valid_files_in_every_container_match_one_shot_resampling():
    audio = speechlike(3.0, 44100)
    for fmt in ("WAV", "FLAC"):
        out = read_audio(io.BytesIO(encode(audio, 44100, fmt)), "a", LIMITS)
        reference = soxr.resample(audio, 44100, 16000, quality="HQ")
        assert out.dtype == np.float32 and abs(len(out) - len(reference)) <= 1
        n = min(len(out), len(reference))
        assert np.abs(out[:n] - reference[:n]).max() < 1e-3  # blockwise stream == whole-file resampling
    for fmt in ("OGG", "MP3"):
        assert len(read_audio(io.BytesIO(encode(audio, 44100, fmt)), "a", LIMITS)) == pytest.approx(48000, abs=1600)
    stereo = np.stack([audio, -audio], axis=1)
    assert np.abs(read_audio(io.BytesIO(encode(stereo, 44100, "WAV")), "a", LIMITS)).max() < 1e-4  # mixed to mono


def test_a_rate_the_header_invents_is_refused_before_decoding():
    """The 40 kB WAV that declares 1 Hz (20,000 s of samples) drove the old server to 2.57 GB."""
    bomb = wav_header(40_000, sample_rate=1) + b"\x00" * 40_000
    with pytest.raises(AudioError, match="sample rate 1 Hz is outside 8000–384000 Hz") as e:
        read_audio(io.BytesIO(bomb), "bomb.wav", LIMITS)
    assert e.value.kind == "out_of_range"
    assert kind(encode(speechlike(0.1, 400_000), 400_000, "WAV")) == "out_of_range"
    assert kind(encode(np.zeros((1600, 9), np.float32), 16000, "WAV")) == "out_of_range"  # 9 channels


def test_an_hour_of_flac_is_refused_from_its_header_in_constant_memory():
    """0.67 MB of FLAC, one hour of 48 kHz stereo: refused before a sample is decoded."""
    hour = encode(np.zeros((48000 * 600, 2), np.float32), 48000, "FLAC")  # 10 minutes keep the test quick
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(AudioError, match=r"600\.0 s of audio, limit 20 s") as e:
        read_audio(io.BytesIO(hour), "hour.flac", LIMITS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert e.value.kind == "too_long" and peak < 5e6, peak
    assert time.perf_counter() - started < 5


def test_a_header_that_hides_the_length_meets_the_running_cap():
    """FLAC with total_samples = 0 ('unknown') and a WAV whose data size is 0xFFFFFFFF (streaming): the decoder
    stops at the limit with 'more than', holding at most the limit's worth of audio."""
    flac = bytearray(encode(speechlike(30.0), 16000, "FLAC"))
    assert flac[:4] == b"fLaC" and flac[4] & 0x7F == 0  # STREAMINFO first
    packed = int.from_bytes(flac[18:26], "big")  # rate 20 bits | channels 3 | bits 5 | total samples 36
    flac[18:26] = (packed & ~((1 << 36) - 1)).to_bytes(8, "big")
    with sf.SoundFile(io.BytesIO(bytes(flac))) as f:
        assert f.frames <= 0 or f.frames >= 2**62 or f.frames == 30 * 16000  # libsndfile may scan for the length
    assert kind(bytes(flac)) == "too_long"
    streaming = bytearray(encode(speechlike(30.0), 16000, "WAV", subtype="PCM_16"))
    streaming[40:44] = struct.pack("<I", 0xFFFFFFFF)
    tracemalloc.start()
    assert kind(bytes(streaming)) == "too_long"
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 16000 * 4 * 2.5, peak  # the output up to the limit, a block, the resampler


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_truncated_bodies_are_refused_in_every_container(fmt):
    data = encode(speechlike(5.0), 16000, fmt)
    assert kind(data) == "ok"
    for fraction in (0.3, 0.5, 0.7, 0.9):
        assert kind(data[: int(len(data) * fraction)]) in {"truncated", "corrupt", "empty"}, fraction


def test_an_ogg_cut_at_a_page_boundary_has_no_end_of_stream():
    rng = np.random.default_rng(0)
    data = encode(rng.uniform(-0.5, 0.5, 16000 * 20).astype(np.float32), 16000, "OGG")  # noise: many pages
    pages = [i for i in range(len(data)) if data.startswith(b"OggS", i)]
    assert len(pages) > 5
    for cut in pages[2:]:  # whole pages, the last one missing: libsndfile decodes it as shorter audio
        assert kind(data[:cut]) in {"truncated", "empty"}, cut


def test_non_finite_samples_and_empty_bodies():
    assert kind(encode(np.full(1600, np.nan, np.float32), 16000, "WAV", subtype="FLOAT")) == "corrupt"
    assert kind(encode(np.full(1600, np.inf, np.float32), 16000, "WAV", subtype="FLOAT")) == "corrupt"
    assert kind(b"") == "empty"
    assert kind(b"this is not audio at all") == "unsupported"


def test_raw_pcm_is_bounded_before_it_is_read():
    pcm = (speechlike(2.0) * 32767).astype("<i2").tobytes()
    out = read_pcm_s16le(io.BytesIO(pcm), 16000, 1, "a.pcm", LIMITS)
    assert len(out) == 32000 and np.abs(out * 32768 - np.frombuffer(pcm, "<i2")).max() < 1
    for rate, channels, reason in [(9_223_372_036_854_775_807, 1, "sample rate"), (10**400, 1, "sample rate"),
                                   (16000, 0, "channels"), (16000, 9, "channels"), (1, 1, "sample rate")]:  # fmt: skip
        with pytest.raises(AudioError, match=reason):
            read_pcm_s16le(io.BytesIO(pcm), rate, channels, "a.pcm", LIMITS)
    with pytest.raises(AudioError, match="whole number"):
        read_pcm_s16le(io.BytesIO(pcm[:-1]), 16000, 1, "a.pcm", LIMITS)
    with pytest.raises(AudioError, match=r"250\.0 s of audio, limit 20 s"):  # known from the size
        read_pcm_s16le(io.BytesIO(b"\0" * 4_000_000), 8000, 1, "a.pcm", LIMITS)


def test_chunk_bounds_cover_the_audio_in_bounded_pieces():
    rng = np.random.default_rng(0)
    for seconds in (0.0, 3.0, 29.9, 30.0, 61.0, 300.0):
        audio = rng.standard_normal(int(seconds * 16000)).astype(np.float32)
        bounds = chunk_bounds(audio, 30.0)
        assert bounds[0][0] == 0 and bounds[-1][1] == len(audio)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        assert all(0 < e - s <= 30 * 16000 for s, e in bounds) or seconds == 0
    with pytest.raises(ValueError, match="chunk_seconds"):
        chunk_bounds(np.zeros(10, np.float32), 0)


VALID = {fmt: encode(speechlike(1.5, 22050), 22050, fmt) for fmt in ("WAV", "FLAC", "OGG", "MP3")}


@st.composite
def mutated(draw, fmt: str, valid: bytes | None = None) -> bytes:
    """A valid file with bytes flipped, spliced, cut or header fields set to extremes."""
    data = bytearray(VALID[fmt] if valid is None else valid)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "field"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 4096))]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:  # a 16- or 32-bit header field at an extreme (rates, sizes, channel counts, frame counts)
            at = draw(st.integers(0, min(64, max(len(data) - 4, 0))))
            data[at : at + 4] = struct.pack("<I", draw(st.sampled_from([0, 1, 2, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF])))
    return bytes(data)


@pytest.mark.parametrize("fmt", sorted(VALID))
def test_any_mutation_of_a_valid_file_is_audio_or_an_audio_error(fmt):
    limits = AudioLimits(max_seconds=5)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated(fmt))
    def check(data: bytes) -> None:
        tracemalloc.start()
        try:
            audio = read_audio(io.BytesIO(data), "m", limits)
        except AudioError as e:
            assert str(e).startswith("m: ")
            return
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert peak < 10e6, peak  # 5 s of output and a block, never what a header claims
        assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) <= 5 * 16000 + 16
        assert np.isfinite(audio).all()

    check()
