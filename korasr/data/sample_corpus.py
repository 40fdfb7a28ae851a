"""The embedded sample corpus: synthetic Korean speech in KsponSpeech's exact layout.

Sentences come from :mod:`korasr.data.sample_text`; the audio is eSpeak NG speaking the *pronunciation* form
(phonetic side of every dual pair, fillers and repeats included, noise tags silent), resampled to 16 kHz s16le
with soxr. Train, dev and eval sentences are disjoint after normalization. eval_other is harder: faster speech,
voices never used in train, and added noise. eval_novel has eval_clean's voices and prosody but sentences from
patterns and words no other split uses (the held-out tenth of the open lexicon, ``sample_text.NOVEL_PATTERNS``): what
the model gets right there it learned of Korean spelling, not of the words; what a language model trained on the train
text gains there is what it gains on text it has not seen. ``sample.json`` counts each split's word types and the
share of its words train also says.

A few lines reproduce the corpus's known defects so that preparation has something to reject or repair:
noise-only utterances (empty after normalization), one malformed dual pair, and odd-length PCM files.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from korasr import __version__
from korasr.data.audio import SAMPLE_RATE
from korasr.data.sample_text import TEXTS, lexicon_sha256, novel_sentence, sentence
from korasr.fsutil import atomic_open, durable_batch, write_json
from korasr.text.normalize import normalize

log = logging.getLogger(__name__)


# Train, dev and eval_clean share the voices and prosody of a *variety*; eval_other is the hard split: four voices
# no training utterance uses, faster speech, added white noise. The babble of the sample noise set
# (korasr.data.noise) uses voices of neither list.
# - "wide" (the recipe's default): twelve of eSpeak NG's Korean variants at 150–230 words per minute and pitch
#   25–75. With the sample noise set and speed perturbation it took eval_other from 64% to about 10% CER on the
#   templates' text; on the open text the recipe's tiny model leaves CTC's blank plateau by step 300 with a 400-step
#   warmup and ends near 24% (recipes/sample/RESULTS.md).
# - "narrow": three voices at 165–180 wpm, pitch 45–55. Learns in 300 steps (eval_clean ~6% CER) and hears no
#   other voice (eval_other ~64%): the test suite's reduced-budget model.
@dataclass(frozen=True)
class Variety:
    voices: tuple[str, ...]
    speed: tuple[int, int]  # words per minute
    pitch: tuple[int, int]  # eSpeak pitch 0–99


WIDE_VOICES = ("ko", "ko+f1", "ko+f2", "ko+f3", "ko+f5", "ko+m1", "ko+m2", "ko+m3", "ko+m5", "ko+m8",
               "ko+klatt", "ko+klatt3")  # fmt: skip
VARIETIES = {
    "wide": Variety(WIDE_VOICES, (150, 230), (25, 75)),
    "narrow": Variety(("ko", "ko+f2", "ko+m3"), (165, 180), (45, 55)),
}
OTHER_VOICES = ("ko+f4", "ko+m4", "ko+m6", "ko+m7")
OTHER_SPEED, OTHER_PITCH = (200, 240), (20, 80)
DESIGN = 5  # bump when voices, prosody or text change, so that a corpus made before is made again
SYNTHS = ("espeak", "tone")
SPLITS = ("train", "dev", "eval_clean", "eval_other", "eval_novel")
# KsponSpeech_0N archives hold these folder numbers (1,000 utterances per folder).
_ARCHIVE_LAST_FOLDER = (124, 248, 372, 496, 623)


@dataclass(frozen=True)
class SampleOptions:
    utterances: int = 2500  # train utterances; dev and each eval split get a twentieth each (≥ 10)
    seed: int = 0
    synth: str = "espeak"  # "tone": fast stand-in audio for tests and benchmarks, not speech
    variety: str = "wide"  # train/dev/eval_clean voices and prosody: a key of VARIETIES
    text: str = "open"  # sentences: a key of sample_text.TEXTS ("templates": the few-hundred-word corpus before it)


@dataclass(frozen=True)
class Utterance:
    split: str
    rel_path: str  # relative to the corpus root, as written in the .trn
    raw: str
    spoken: str
    voice: str
    speed: int
    pitch: int
    snr_db: float | None  # added white noise; None for clean
    odd_byte: bool
    key: int  # seeds the noise of this utterance


def archive_of(folder: int) -> str:
    for index, last in enumerate(_ARCHIVE_LAST_FOLDER, start=1):
        if folder <= last:
            return f"KsponSpeech_{index:02d}"
    raise ValueError(f"KsponSpeech has 623 folders, not {folder}")


def train_path(number: int) -> str:
    folder = (number - 1) // 1000 + 1
    return f"{archive_of(folder)}/KsponSpeech_{folder:04d}/KsponSpeech_{number:06d}.pcm"


def eval_path(split: str, number: int) -> str:
    return f"KsponSpeech_eval/{split}/KsponSpeech_E{number:05d}.pcm"


def plan(options: SampleOptions) -> list[Utterance]:
    """Decide every utterance (text, voice, speed, noise) from the seed; no audio yet."""
    if options.variety not in VARIETIES:
        raise ValueError(f"variety must be one of {sorted(VARIETIES)}, not {options.variety!r}")
    if options.text not in TEXTS:
        raise ValueError(f"text must be one of {TEXTS}, not {options.text!r}")
    heard = VARIETIES[options.variety]
    r = random.Random(options.seed)
    n_train = options.utterances
    n_small = max(10, n_train // 20)
    sizes = {"eval_clean": n_small, "eval_other": n_small, "dev": n_small, "train": n_train}
    seen: set[str] = set()
    texts: dict[str, list[str]] = {}
    for split, size in sizes.items():  # eval first: no eval sentence may appear in training
        texts[split] = []
        while len(texts[split]) < size:
            raw = sentence(r, options.text)
            key = normalize(raw).text
            if key not in seen:
                seen.add(key)
                texts[split].append(raw)
    # Known corpus defects, at fixed places in train.
    defects = {7: "b/ n/", 8: "n/ o/ b/", 11: "(내일)/(내일 보자 b/"}
    for index, raw in defects.items():
        if index < n_train:
            texts["train"][index] = raw

    utterances: list[Utterance] = []
    key = 0
    number = {"train": 0, "eval": 0}
    for split in ("train", "dev", "eval_clean", "eval_other"):
        for raw in texts[split]:
            key += 1
            if split in ("train", "dev"):
                number["train"] += 1
                rel = train_path(number["train"])
            else:
                number["eval"] += 1
                rel = eval_path(split, number["eval"])
            spoken = normalize(raw, "phonetic", "df").text  # empty for noise-only and malformed lines
            if split == "eval_other":
                voice, speed, pitch = r.choice(OTHER_VOICES), r.randint(*OTHER_SPEED), r.randint(*OTHER_PITCH)
                snr: float | None = r.uniform(10, 20)
            else:
                voice, speed, pitch = r.choice(heard.voices), r.randint(*heard.speed), r.randint(*heard.pitch)
                snr = None
            odd = split == "train" and number["train"] % 97 == 0
            utterances.append(Utterance(split, rel, raw, spoken, voice, speed, pitch, snr, odd, key))
    # eval_novel last, from a generator of its own: the four splits above stay what they were before it existed.
    # Its words are the lexicon's held-out part; a sentence that says a word another split says (a held-out noun and
    # its particle spelling some other split's word, say) is drawn again.
    novel = random.Random(f"{options.seed}:eval_novel")
    said = {w for u in utterances for form in ("spelling", "phonetic") for w in normalize(u.raw, form).text.split()}
    raws: list[str] = []
    for tries in itertools.count(1):
        if len(raws) == n_small:
            break
        if tries > 1000 * n_small:  # a generator that cannot say anything new would loop forever
            raise RuntimeError(f"eval_novel: {len(raws)} of {n_small} sentences whose words no other split says")
        raw = novel_sentence(novel, options.text)
        text = normalize(raw).text
        if text not in seen and not said & set(text.split()):
            seen.add(text)
            raws.append(raw)
    for raw in raws:
        key += 1
        number["eval"] += 1
        voice, speed, pitch = novel.choice(heard.voices), novel.randint(*heard.speed), novel.randint(*heard.pitch)
        spoken = normalize(raw, "phonetic", "df").text
        rel = eval_path("eval_novel", number["eval"])
        utterances.append(Utterance("eval_novel", rel, raw, spoken, voice, speed, pitch, None, False, key))
    return utterances


def _tone(text: str, rng: np.random.Generator) -> np.ndarray:
    """Stand-in audio: a deterministic chirp about as long as speaking ``text`` would take."""
    seconds = 0.3 + 0.16 * len(text.replace(" ", ""))
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = rng.uniform(120, 240)
    return (0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t)))).astype(np.float32)


def render(utt: Utterance, seed: int, synth: str) -> bytes:
    """The utterance's raw PCM bytes (s16le, 16 kHz, mono)."""
    import soxr

    from korasr.data import tts

    rng = np.random.default_rng([seed, utt.key])
    if not utt.spoken:  # a noise-only utterance
        speech = np.zeros(int(rng.uniform(0.8, 1.5) * SAMPLE_RATE), dtype=np.float32)
    elif synth == "tone":
        speech = _tone(utt.spoken, rng)
    else:
        speech = soxr.resample(
            tts.synthesize(utt.spoken, utt.voice, utt.speed, utt.pitch), tts.ESPEAK_RATE, SAMPLE_RATE
        )
    lead, tail = (np.zeros(int(rng.uniform(0.1, 0.4) * SAMPLE_RATE), np.float32) for _ in range(2))
    parts = [lead, speech, tail]
    if utt.raw.lstrip().startswith(("b/", "n/", "l/", "o/")) or not utt.spoken:
        # The tagged noise itself: a short burst of noise before the speech.
        parts.insert(0, (rng.standard_normal(int(0.3 * SAMPLE_RATE)) * 0.03).astype(np.float32))
    audio = np.concatenate(parts)
    if utt.snr_db is not None:
        power = float(np.mean(speech**2)) if speech.size and np.any(speech) else 1e-4
        noise_power = power / 10 ** (utt.snr_db / 10)
        audio = audio + rng.standard_normal(audio.size).astype(np.float32) * np.sqrt(noise_power)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    return pcm + b"\x00" if utt.odd_byte else pcm


_WORKER: dict[str, object] = {}


def _init(root: str, seed: int, synth: str) -> None:
    _WORKER.update(root=Path(root), seed=seed, synth=synth)


_CHUNK = 64  # utterances written, then synced together (fsutil.durable_batch)


def _write(utts: list[Utterance]) -> list[float]:
    """Each utterance's PCM and transcript, on the disk under their final names when this returns; its seconds."""
    root: Path = _WORKER["root"]  # type: ignore[assignment]
    seconds = []
    with durable_batch() as batch:
        for utt in utts:
            pcm_path = root / utt.rel_path
            pcm_path.parent.mkdir(parents=True, exist_ok=True)
            pcm = render(utt, _WORKER["seed"], _WORKER["synth"])  # type: ignore[arg-type]
            with atomic_open(pcm_path, "wb", batch=batch) as f:
                f.write(pcm)
            # Each utterance's own transcript file, CP949 as in the distributed corpus.
            with atomic_open(pcm_path.with_suffix(".txt"), "wb", batch=batch) as f:
                f.write(utt.raw.encode("cp949"))
            seconds.append(len(pcm) // 2 / SAMPLE_RATE)
    return seconds


def make_sample_corpus(
    out: str | os.PathLike[str], options: SampleOptions | None = None, jobs: int = 1, progress: bool = True
) -> Path:
    """Write the sample corpus under ``out``; skip when ``out/sample.json`` records the same options."""
    from tqdm import tqdm

    from korasr.data import tts

    options = options or SampleOptions()
    if options.synth not in SYNTHS:
        raise ValueError(f"synth must be one of {SYNTHS}, not {options.synth!r}")
    if options.utterances < 20:
        raise ValueError("the sample corpus needs at least 20 train utterances")
    root = Path(out).resolve()
    record = root / "sample.json"
    engine = f"espeak-ng {tts.version()} ({tts.backend()})" if options.synth == "espeak" else "tone"
    wanted = {
        "options": asdict(options),
        "korasr_version": __version__,
        "engine": engine,
        "design": DESIGN,
        "lexicon_sha256": lexicon_sha256() if options.text == "open" else None,
    }
    try:
        previous = json.loads(record.read_text(encoding="utf-8"))
        if {k: previous.get(k) for k in wanted} == wanted:
            log.info("%s already holds this sample corpus (%s): nothing to do", root, wanted["options"])
            return root
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    record.unlink(missing_ok=True)

    started = time.perf_counter()
    utterances = plan(options)
    log.info("writing %d utterances (%s) to %s with %d jobs", len(utterances), engine, root, jobs)
    root.mkdir(parents=True, exist_ok=True)
    init = (str(root), options.seed, options.synth)
    bar = tqdm(total=len(utterances), unit="utt", desc="sample corpus", disable=not progress)
    chunks = [utterances[i : i + _CHUNK] for i in range(0, len(utterances), _CHUNK)]
    durations: list[float] = []
    if jobs <= 1:
        _init(*init)
        for chunk in chunks:
            durations.extend(_write(chunk))
            bar.update(len(chunk))
    else:
        with multiprocessing.get_context("fork").Pool(jobs, _init, init) as pool:
            for seconds in pool.imap(_write, chunks):
                durations.extend(seconds)
                bar.update(len(seconds))
    bar.close()

    scripts = root / "KsponSpeech_scripts"
    scripts.mkdir(exist_ok=True)
    hours: dict[str, float] = {}
    counts: dict[str, int] = {}
    for split in SPLITS:
        rows = [(u, d) for u, d in zip(utterances, durations, strict=True) if u.split == split]
        with atomic_open(scripts / f"{split}.trn") as f:
            f.writelines(f"{u.rel_path} :: {u.raw}\n" for u, _ in rows)
        hours[split] = round(sum(d for _, d in rows) / 3600, 4)
        counts[split] = len(rows)
    words = {w for u in utterances for w in normalize(u.raw).text.split()}
    vocabulary = word_report(utterances)
    elapsed = time.perf_counter() - started
    write_json(
        record,
        {
            **wanted,
            "python": platform.python_version(),
            "utterances": counts,
            "hours": hours,
            "distinct_words": len(words),
            "words": vocabulary,
            "seconds_taken": round(elapsed, 1),
            "jobs": jobs,
        },
    )
    log.info(
        "sample corpus: %s utterances, %s hours, %d distinct words, made in %.1f s", counts, hours, len(words), elapsed
    )
    for line in format_word_report(vocabulary).splitlines():
        log.info("%s", line)
    return root


def word_report(utterances: list[Utterance]) -> dict[str, dict[str, float]]:
    """Per split: word types and tokens (normalized, space-separated), and the share of its tokens and types that
    train also says (0 for eval_novel by design)."""
    tokens = {
        split: [w for u in utterances if u.split == split for w in normalize(u.raw).text.split()] for split in SPLITS
    }
    train = set(tokens["train"])
    out = {}
    for split, ws in tokens.items():
        types = set(ws)
        out[split] = {
            "types": len(types),
            "tokens": len(ws),
            "tokens_in_train": round(sum(w in train for w in ws) / max(len(ws), 1), 4),
            "types_in_train": round(len(types & train) / max(len(types), 1), 4),
        }
    return out


def format_word_report(report: dict[str, dict[str, float]]) -> str:
    lines = ["| split | word types | words | words train says | types train says |", "|---|---|---|---|---|"]
    for split, r in report.items():
        lines.append(
            f"| {split} | {r['types']:,} | {r['tokens']:,} | {100 * r['tokens_in_train']:.1f}% | "
            f"{100 * r['types_in_train']:.1f}% |"
        )
    return "\n".join(lines)
