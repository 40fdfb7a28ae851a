"""An evaluation set for hotwords: sentences that carry names and terms the sample corpus never says.

Each utterance is an everyday sentence frame with one *term* (a foreign place, a person's name, a product or a
technical term) spoken by the sample corpus's training voices (so that only the term is new), written as 16 kHz
WAV with a NeMo manifest (``hotword_eval.jsonl``), the terms as a hotword list (``hotwords.txt``) and an unrelated
list of the same kind that no utterance contains (``unrelated.txt``: false boosts). No term occurs in the sample
corpus's text, checked when the set is made.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np

from korasr.data.audio import SAMPLE_RATE
from korasr.data.hotword_terms import TERMS, UNRELATED
from korasr.data.sample_corpus import VARIETIES, SampleOptions, plan
from korasr.fsutil import atomic_open, durable_batch, write_json
from korasr.text.normalize import normalize

FRAMES = [
    "저는 어제 {t} 얘기를 들었어요",
    "{t} 때문에 회의가 길어졌어요",
    "동생이 {t} 책을 사 왔어요",
    "그 사람이 {t} 이야기만 해요",
    "다음 주에 {t} 발표가 있어요",
    "우리 팀장님은 {t} 좋아해요",
]


def make_hotword_set(out: str | os.PathLike[str], per_term: int = 5, seed: int = 0) -> Path:
    """Write the set under ``out`` and return the manifest's path (skipped when it is already there)."""
    import soundfile as sf
    import soxr

    from korasr.data import tts

    out = Path(out).resolve()
    manifest = out / "hotword_eval.jsonl"
    record = out / "hotword_set.json"
    wanted = {"terms": TERMS, "unrelated": UNRELATED, "frames": FRAMES, "per_term": per_term, "seed": seed}
    if (
        manifest.is_file()
        and record.is_file()
        and json.loads(record.read_text(encoding="utf-8")).get("options") == wanted
    ):
        return manifest
    corpus_text = " ".join(u.spoken.replace(" ", "") for u in plan(SampleOptions()))
    heard = [t for t in TERMS + UNRELATED if t in corpus_text]
    if heard:
        raise ValueError(f"terms the sample corpus says: {heard}")
    r = random.Random(seed)
    voices = VARIETIES[SampleOptions().variety]
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    with durable_batch() as batch:  # the audio synced together, before the manifest that lists it
        for term in TERMS:
            for _ in range(per_term):
                text = normalize(r.choice(FRAMES).format(t=term)).text
                voice, speed, pitch = r.choice(voices.voices), r.randint(*voices.speed), r.randint(*voices.pitch)
                audio = soxr.resample(tts.synthesize(text, voice, speed, pitch), tts.ESPEAK_RATE, SAMPLE_RATE)
                pad = np.zeros(int(0.2 * SAMPLE_RATE), np.float32)
                audio = np.concatenate([pad, audio.astype(np.float32), pad])
                path = out / "audio" / f"hw_{len(rows):04d}.wav"
                with atomic_open(path, "wb", batch=batch) as f:
                    sf.write(f, audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
                rows.append({"audio_filepath": str(path), "duration": round(len(audio) / SAMPLE_RATE, 4), "text": text,
                             "utt_id": path.stem, "term": term, "voice": voice})  # fmt: skip
    with atomic_open(out / "hotwords.txt") as f:
        f.write("".join(f"{t}\n" for t in TERMS))
    with atomic_open(out / "unrelated.txt") as f:
        f.write("".join(f"{t}\n" for t in UNRELATED))
    with atomic_open(manifest) as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_json(record, {"options": wanted, "utterances": len(rows)})
    return manifest


def term_recall(rows: list[dict], hyps: list[str]) -> float:
    """Share of utterances whose hypothesis contains the utterance's term (spaces ignored), in percent."""
    found = sum(row["term"] in hyp.replace(" ", "") for row, hyp in zip(rows, hyps, strict=True))
    return 100.0 * found / max(len(rows), 1)
