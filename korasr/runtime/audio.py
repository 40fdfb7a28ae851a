"""Audio in, bounded: 16 kHz mono float32 from an untrusted file or raw PCM, with every size checked before
memory is committed to it.

The container's header is read first (rate, channels, declared frames): a rate or channel count out of range,
or a declared duration over the limit, is refused before a sample is decoded. Decoding then runs in blocks
with a running count, so a header that lies (or a stream with no length) stops at the limit too; each block is
mixed to mono and resampled as it comes, so memory is the output (at most ``max_seconds`` × 64 kB) plus one
block. A body shorter than its header says (WAV, FLAC, MP3 with a Xing/Info frame count) or an Ogg stream with
no end-of-stream page is refused as truncated.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
from dataclasses import dataclass
from typing import IO

import numpy as np
import soundfile as sf
import soxr

from korasr import SAMPLE_RATE

BLOCK_FRAMES = 1 << 16


class AudioError(ValueError):
    """Audio that cannot be accepted. ``kind``: empty, unsupported, corrupt, truncated, out_of_range, too_long."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class AudioLimits:
    """What an input may declare. Telephone audio is 8 kHz; 384 kHz is the highest rate studio gear writes."""

    max_seconds: float | None = None
    min_rate: int = 8000
    max_rate: int = 384_000
    max_channels: int = 8

    def check_format(self, name: str, rate: int, channels: int) -> None:
        if not self.min_rate <= rate <= self.max_rate:
            raise AudioError("out_of_range", f"{name}: sample rate {rate} Hz is outside "
                             f"{self.min_rate}–{self.max_rate} Hz")  # fmt: skip
        if not 1 <= channels <= self.max_channels:
            raise AudioError("out_of_range", f"{name}: {channels} channels, at most {self.max_channels}")

    def check_duration(self, name: str, seconds: float, exact: bool = True) -> None:
        if self.max_seconds is not None and seconds > self.max_seconds:
            amount = f"{seconds:.1f} s" if exact else f"more than {self.max_seconds:g} s"
            raise AudioError("too_long", f"{name}: {amount} of audio, limit {self.max_seconds:g} s")


def to_mono_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """float32 mono at 16 kHz from ``[N]`` or ``[N, channels]`` audio at any rate (trusted, in memory)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    elif audio.ndim != 1:
        raise ValueError(f"audio must be [samples] or [samples, channels], got shape {audio.shape}")
    if sample_rate != SAMPLE_RATE:
        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return audio


class _Mono16k:
    """Blocks of ``[n, channels]`` audio at ``rate`` in, one 16 kHz mono array out, with a running limit.

    The output is written into one buffer as blocks arrive, so the audio is never held twice (parts and their
    concatenation, or an old and a grown buffer). With a limit (up to 10 minutes), the buffer is allocated at
    the limit's size: untouched pages cost address space, not memory, so a header that hides or understates the
    length costs no more than one that tells it. Otherwise ``expected`` frames (the header's count) size it,
    doubling if the header understated."""

    def __init__(self, name: str, rate: int, limits: AudioLimits, expected: int = 0):
        self.name, self.rate, self.limits = name, rate, limits
        self.cap = math.floor(limits.max_seconds * rate) if limits.max_seconds is not None else None
        self.stream = (
            soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ") if rate != SAMPLE_RATE else None
        )
        frames = max(expected, BLOCK_FRAMES)
        if self.cap is not None:  # up to 10 minutes of address space at once; past that it doubles
            frames = min(self.cap, max(frames, 600 * rate))
        self.out = np.empty(self._samples(frames), dtype=np.float32)
        self.filled = 0
        self.frames = 0

    def _samples(self, frames: int) -> int:
        return math.ceil(frames * SAMPLE_RATE / self.rate) + 1024  # the resampler's rounding and flush

    def _write(self, mono: np.ndarray) -> None:
        end = self.filled + len(mono)
        if end > len(self.out):
            self.out = np.resize(self.out, max(end, 2 * len(self.out)))
        self.out[self.filled : end] = mono
        self.filled = end

    def add(self, block: np.ndarray) -> None:
        self.frames += len(block)
        if self.cap is not None and self.frames > self.cap:
            self.limits.check_duration(self.name, math.inf, exact=False)
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        if not np.isfinite(mono).all():
            raise AudioError("corrupt", f"{self.name}: samples that are not finite numbers (NaN or infinity)")
        self._write(self.stream.resample_chunk(mono) if self.stream else mono)

    def finish(self) -> np.ndarray:
        if self.frames == 0:
            raise AudioError("empty", f"{self.name}: no audio samples")
        if self.stream:
            self._write(self.stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        return self.out[: self.filled]


def read_audio(source: str | IO[bytes], name: str | None = None, limits: AudioLimits = AudioLimits()) -> np.ndarray:
    """16 kHz mono float32 from a file libsndfile reads (WAV, FLAC, OGG Vorbis/Opus, MP3, …): a path or a
    seekable binary file object. Raises :class:`AudioError` naming ``name`` and the reason."""
    name = name or (source if isinstance(source, str) else "audio")
    size = _size(source)
    if size == 0:
        raise AudioError("empty", f"{name}: empty body")
    try:
        f = sf.SoundFile(source)
    except sf.LibsndfileError as e:
        message = str(e)
        if "Format not recognised" in message or "unknown format" in message.lower():
            raise AudioError("unsupported", f"{name}: not a recognised audio format ({message})") from None
        raise AudioError("corrupt", f"{name}: cannot decode audio: {message}") from None
    except (RuntimeError, ValueError, EOFError, OSError) as e:
        raise AudioError("corrupt", f"{name}: cannot decode audio: {e}") from None
    with f:
        limits.check_format(name, f.samplerate, f.channels)
        declared = f.frames if 0 < f.frames < 2**62 else 0  # libsndfile says 2**63 - 1 for 'unknown'
        if declared:
            limits.check_duration(name, declared / f.samplerate)
        out = _Mono16k(name, f.samplerate, limits, declared)
        try:
            while len(block := f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)):
                out.add(block)
        except sf.LibsndfileError as e:
            raise AudioError("corrupt", f"{name}: cannot decode audio: {e}") from None
        audio = out.finish()
        fmt, extra = f.format, f.extra_info
    if declared and out.frames < declared and fmt != "OGG":
        raise AudioError("truncated", f"{name}: truncated: the header declares {declared} frames, the body "
                         f"holds {out.frames}")  # fmt: skip
    if fmt == "WAV" and (m := _WAV_SHORT.search(extra)) and int(m.group(1)) > int(m.group(2)):
        raise AudioError("truncated", f"{name}: truncated: the header declares {m.group(1)} bytes of audio, "
                         f"the body holds {m.group(2)}")  # fmt: skip
    if fmt == "OGG" and not isinstance(source, str):
        _check_ogg_complete(source, name)
    elif fmt == "OGG":
        with open(source, "rb") as fh:
            _check_ogg_complete(fh, name)
    return audio


def read_pcm_s16le(source: IO[bytes], rate: int, channels: int, name: str = "audio",
                   limits: AudioLimits = AudioLimits()) -> np.ndarray:  # fmt: skip
    """16 kHz mono float32 from raw little-endian 16-bit PCM in a seekable binary file object; rate, channels
    and duration are checked before a sample is read."""
    limits.check_format(name, rate, channels)
    size = _size(source)
    if size == 0:
        raise AudioError("empty", f"{name}: empty body")
    if size % (2 * channels):
        raise AudioError("corrupt", f"{name}: raw PCM length {size} is not a whole number of "
                         f"{channels}-channel 16-bit frames")  # fmt: skip
    limits.check_duration(name, size / (2 * channels) / rate)
    out = _Mono16k(name, rate, limits, size // (2 * channels))
    while data := source.read(BLOCK_FRAMES * 2 * channels):
        out.add(np.frombuffer(data, dtype="<i2").reshape(-1, channels).astype(np.float32) / 32768.0)
    return out.finish()


# libsndfile's log for a WAV whose data chunk is shorter than its header says: "data : 110340 (should be 1956)"
_WAV_SHORT = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
_OGG_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, sequence, crc, segments


def _check_ogg_complete(f: IO[bytes], name: str) -> None:
    """Walk the Ogg pages: the last must end exactly at the end of the file and carry the end-of-stream flag.
    A body cut anywhere fails one or the other (a cut at a page boundary leaves no end-of-stream page)."""
    f.seek(0, io.SEEK_END)
    end = f.tell()
    position, flags = 0, 0
    while position < end:
        f.seek(position)
        header = f.read(_OGG_HEADER.size)
        if len(header) < _OGG_HEADER.size or header[:4] != b"OggS":
            raise AudioError("truncated" if len(header) < _OGG_HEADER.size else "corrupt",
                             f"{name}: broken Ogg page at byte {position} of {end}")  # fmt: skip
        flags, segments = header[5], header[-1]
        table = f.read(segments)
        if len(table) < segments:
            raise AudioError("truncated", f"{name}: truncated: Ogg page at byte {position} is cut short")
        position += _OGG_HEADER.size + segments + sum(table)
    if position > end:
        raise AudioError("truncated", f"{name}: truncated: the last Ogg page needs {position - end} more bytes")
    if not flags & 0x04:
        raise AudioError("truncated", f"{name}: truncated: the Ogg stream has no end-of-stream page")


def _size(source: str | IO[bytes]) -> int:
    if isinstance(source, str):
        return os.path.getsize(source)
    source.seek(0, io.SEEK_END)
    size = source.tell()
    source.seek(0)
    return size
