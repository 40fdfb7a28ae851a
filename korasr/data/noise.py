"""Noise for augmentation: any folder of audio (or MUSAN, through lhotse's own recipe) → the lhotse cut manifest
NeMo's ``model.train_ds.noise_path`` takes; and the sample corpus's own noise set, made here.

Every audio file found ends in the manifest or in ``rejects.jsonl`` with its reason, as in data preparation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from korasr import __version__
from korasr.data.audio import SAMPLE_RATE
from korasr.fsutil import atomic_open, atomic_path, durable_batch, write_json

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")
MANIFEST = "noise_cuts.jsonl.gz"  # lhotse reads it by its suffix; NeMo's noise_path takes the path
MUSAN_PARTS = ("music", "noise", "speech")  # lhotse's default, as icefall mixes them


@dataclass(frozen=True)
class NoiseResult:
    manifest: Path
    rejects: Path
    summary: Path
    recordings: int
    hours: float
    skipped: bool


def is_musan(root: Path) -> bool:
    return all((root / part).is_dir() for part in MUSAN_PARTS)


def prepare_noise(root: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> NoiseResult:
    """Write ``out_dir/noise_cuts.jsonl.gz`` (one cut per recording), ``rejects.jsonl`` and ``noise.json``.
    A MUSAN tree (music/, noise/, speech/) goes through lhotse's ``prepare_musan``; any other folder is searched
    for audio files. Skipped when ``noise.json`` records the same files (paths, sizes, times)."""
    from lhotse import CutSet, Recording, RecordingSet

    started = time.perf_counter()
    root, out_dir = Path(root).resolve(), Path(out_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (a folder of noise audio, or MUSAN)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    layout = "musan" if is_musan(root) else "folder"
    digest = hashlib.sha256(json.dumps([layout, *[(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]])
                            .encode()).hexdigest()  # fmt: skip
    manifest, rejects, summary = out_dir / MANIFEST, out_dir / "rejects.jsonl", out_dir / "noise.json"
    try:
        previous = json.loads(summary.read_text(encoding="utf-8"))
        if previous.get("fingerprint") == digest and manifest.is_file():
            log.info("%s is up to date with %s: nothing to do", out_dir, root)
            return NoiseResult(manifest, rejects, summary, previous["recordings"], previous["hours"], True)
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    if not files:
        raise FileNotFoundError(f"{root}: no audio files ({', '.join(AUDIO_SUFFIXES)}) below it")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.unlink(missing_ok=True)

    recordings, rejected = [], []
    if layout == "musan":
        from lhotse.recipes.musan import prepare_musan

        parts = prepare_musan(root, parts=MUSAN_PARTS)
        recordings = [r for part in parts.values() for r in part["recordings"]]
        known = {Path(s.path).resolve() for r in recordings for s in r.sources}
        rejected = [{"path": str(p), "reason": "not in MUSAN's parts"} for p in files if p.resolve() not in known]
    else:
        for path in files:
            try:
                recording = Recording.from_file(path, recording_id=str(path.relative_to(root)))
            except Exception as e:  # lhotse raises whatever its audio backends raise
                rejected.append({"path": str(path), "reason": "unreadable audio", "detail": str(e)[:300]})
                continue
            if recording.duration <= 0:
                rejected.append({"path": str(path), "reason": "empty audio"})
            else:
                recordings.append(recording)
    if not recordings:
        raise ValueError(f"{root}: none of its {len(files)} audio files could be read (see {rejects})")
    cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings(recordings))
    with atomic_path(manifest, suffix=".jsonl.gz") as tmp:  # lhotse picks the format by the suffix
        cuts.to_file(tmp)
    with atomic_open(rejects) as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected)
    hours = round(sum(r.duration for r in recordings) / 3600, 4)
    write_json(summary, {"root": str(root), "layout": layout, "fingerprint": digest, "files": len(files),
                         "recordings": len(recordings), "rejected": len(rejected), "hours": hours,
                         "korasr_version": __version__, "seconds_taken": round(time.perf_counter() - started, 2)})  # fmt: skip
    log.info("noise: %d recordings (%.2f h) from %s (%s), %d rejected → %s", len(recordings), hours, root, layout,
             len(rejected), manifest)  # fmt: skip
    return NoiseResult(manifest, rejects, summary, len(recordings), hours, False)


# --- the sample corpus's own noise ------------------------------------------------------------------------------

# eSpeak voices that speak no utterance of the sample corpus (neither its train nor its eval_other voices): babble
BABBLE_VOICES = ["ko+Andy", "ko+Annie", "ko+iven2", "ko+steph", "ko+john", "ko+Alicia"]
NOISE_KINDS = ("babble", "white", "pink", "brown", "hum", "tones")


def _coloured(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise whose power falls as 1/f^exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return noise / (np.abs(noise).max() + 1e-9)


def _hum(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    base = rng.choice([50.0, 60.0])
    return sum(np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 8)) / 2.6


def _tones(rng: np.random.Generator, n: int) -> np.ndarray:
    """Music-like: a chord of 2–4 notes every 0.25–1 s, each with an attack and a decay."""
    out, t0 = np.zeros(n), 0
    while t0 < n:
        length = int(rng.uniform(0.25, 1.0) * SAMPLE_RATE)
        t = np.arange(min(length, n - t0)) / SAMPLE_RATE
        envelope = np.minimum(t / 0.02, 1) * np.exp(-3 * t)
        for _ in range(rng.integers(2, 5)):
            freq = 220 * 2 ** (rng.integers(-12, 24) / 12)
            out[t0 : t0 + len(t)] += envelope * np.sin(2 * np.pi * freq * t)
        t0 += length
    return out / (np.abs(out).max() + 1e-9)


def _babble(rng: np.random.Generator, n: int, seed: int) -> np.ndarray:
    """3–6 talkers at once, each a sentence of the sample lexicon in a voice the corpus never speaks in."""
    import soxr

    from korasr.data import tts
    from korasr.data.sample_text import sentence
    from korasr.text.normalize import normalize

    r = random.Random(seed)
    out = np.zeros(n)
    for _ in range(rng.integers(3, 7)):
        talker = np.zeros(0)
        while len(talker) < n:
            text = normalize(sentence(r, "templates"), "phonetic", "df").text  # the noise set as before issue 39
            if text:
                speech = soxr.resample(tts.synthesize(text, r.choice(BABBLE_VOICES), r.randint(150, 220),
                                                      r.randint(20, 80)), tts.ESPEAK_RATE, SAMPLE_RATE)  # fmt: skip
                talker = np.concatenate([talker, speech, np.zeros(int(r.uniform(0.05, 0.3) * SAMPLE_RATE))])
        out += np.roll(talker[:n], rng.integers(0, n))
    return out / (np.abs(out).max() + 1e-9)


def make_sample_noise(out: str | os.PathLike[str], files_per_kind: int = 8, seconds: float = 10.0, seed: int = 0,
                      synth: str = "espeak") -> Path:  # fmt: skip
    """The sample recipe's noise set: ``files_per_kind`` files of ``seconds`` each of babble (eSpeak voices no
    utterance uses), white, pink and brown noise, mains hum with harmonics and music-like tone chords, 16 kHz
    WAV. ``synth="tone"`` replaces babble by chords (no eSpeak: quick tests). Deterministic in ``seed``."""
    import soundfile as sf

    root = Path(out).resolve()
    record = root / "noise.json"
    wanted = {"files_per_kind": files_per_kind, "seconds": seconds, "seed": seed, "synth": synth,
              "korasr_version": __version__}  # fmt: skip
    try:
        if json.loads(record.read_text(encoding="utf-8")) == wanted:
            return root
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    root.mkdir(parents=True, exist_ok=True)
    n = int(seconds * SAMPLE_RATE)
    with durable_batch() as batch:  # the files synced together, before the record that vouches for them
        for k, kind in enumerate(NOISE_KINDS):
            for i in range(files_per_kind):
                rng = np.random.default_rng([seed, k, i])
                if kind == "babble":
                    audio = _babble(rng, n, seed * 1000 + i) if synth == "espeak" else _tones(rng, n)
                elif kind == "hum":
                    audio = _hum(rng, n)
                elif kind == "tones":
                    audio = _tones(rng, n)
                else:
                    audio = _coloured(rng, n, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
                path = root / kind / f"{kind}_{i:02d}.wav"
                path.parent.mkdir(exist_ok=True)
                with atomic_open(path, "wb", batch=batch) as f:
                    sf.write(f, (0.5 * audio).astype(np.float32), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    write_json(record, wanted)
    log.info("sample noise: %d files of %.0f s (%s) in %s", files_per_kind * len(NOISE_KINDS), seconds,
             ", ".join(NOISE_KINDS), root)  # fmt: skip
    return root
