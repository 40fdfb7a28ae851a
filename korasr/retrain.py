"""`korasr retrain` (`make retrain`): new labelled data in, a gated candidate out, production moved only on a pass.

Before anything, the registry is asked what is in ``production`` (``registry.production``): a registry that does not
answer, or a ``production`` that points at a deleted version, stops the run with the reason; only a registry that
answered "nothing in production" lets a first model train from scratch.

Stages, in order, each recorded in ``<work>/<drop>/state.json`` when it finishes with the inputs it was made from
(option values, manifest hashes, the candidate's SHA-256, production's version): a rerun reuses a finished stage only
when every input matches, so the same command after an interruption resumes at the first unfinished stage (training
itself resumes from its last checkpoint) and a rerun with other settings redoes what they change (a training with
other overrides in a folder of its own), never returning an older result. A rerun after production moved (not to
this drop's own candidate) stops, naming the move: the gate compared against the old production.

1. **ingest** — a KsponSpeech-layout drop (prepared as ``korasr prepare kspon`` does, with the recipe's form) or a
   NeMo manifest (text normalized with the recipe's form). Every row is checked (audio readable, text non-empty);
   a row whose audio content (SHA-256 of its decoded samples) or text equals an utterance of a fixed evaluation
   split is refused with the reason, so new data never leaks into the gate's test sets. A fixed fraction of the
   rest (by hash, so reruns agree) is held out. The increment is named by the hash of what was accepted.
2. **train** — fine-tune from the model in ``production`` (its registered ``.nemo``) on the increment mixed with
   replayed earlier training data (``replay_ratio`` × the increment, sampled with the seed); from scratch when
   nothing is in production. A ``korasr train`` process with the recipe's configs, then ``retrain.yaml`` when the
   recipe has one, then the caller's overrides.
3. **evaluate** — the candidate and the production model (both ``.nemo``, the same decoder) on the same fixed
   splits and on the increment's held-out part, one report side by side.
4. **gate** — every fixed split: candidate CER ≤ ``max_cer`` (one bound, or one per split), and not worse than production by more than
   ``max(tolerance_abs, tolerance_rel % of production's CER)``. Each row carries its utterances and characters and
   a paired bootstrap 95% interval of the difference (utterances resampled), which says how little a small split
   can tell. A failed gate stops here: nothing is exported or registered, production does not move.
5. **export** (with its parity gate) and **register** the version with ``candidate`` (parent: production's
   version; a version made from the same ``.nemo`` is found and reused, never registered twice).
6. **promote** (with ``promote``): ``production`` is read again and moves to the new version only when it still names
   the version the gate compared against (compare-and-set; otherwise the run stops naming both versions).
7. **notify** — a Slack-compatible JSON POST (``{"text": ...}`` with the gate's table) to ``webhook`` when set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from korasr.errors import KorasrError
from korasr.fsutil import atomic_open, write_json

log = logging.getLogger(__name__)

STAGES = ("ingest", "train", "evaluate", "gate", "export", "register", "promote", "notify")
STAGE_FOLDERS = {"train": ("train",), "evaluate": ("eval",)}  # what a stage leaves that a rerun resumes from
WEBHOOK_TIMEOUT_S = 10.0
WEBHOOK_TRIES = 3
WEBHOOK_BACKOFF_S = 1.0  # the first retry within 1 s, the second within 2 s (korasr/retry.py: jittered)
WEBHOOK_MAX_WAIT_S = 60.0  # a Retry-After asking for longer ends the notice (logged, not fatal)


class RetrainError(KorasrError, RuntimeError):
    """A stage cannot run; the message names the input and why."""


class GateRejected(KorasrError, RuntimeError):
    """The candidate failed the gate: nothing was registered and production did not move."""


# `korasr retrain`'s exit status for a candidate the gate refused: its own, because 1 is any uncaught exception and 2
# an error korasr names (the Airflow DAG tells a refused candidate from a crash by it)
GATE_REJECTED_EXIT = 3


@dataclass
class RetrainOptions:
    name: str  # the registered model
    recipe: str  # a recipe folder (its train.yaml)
    new_data: str  # a KsponSpeech-layout folder or a NeMo manifest
    eval_manifests: list[str]  # the fixed evaluation splits the gate scores
    replay: list[str] = field(default_factory=list)  # earlier training manifests to mix in
    replay_ratio: float = 1.0  # replayed utterances per increment utterance
    holdout: float = 0.1  # share of the increment held out for its own evaluation
    max_cer: dict[str, float] = field(default_factory=lambda: {"*": 5.0})  # per split; "*" for the rest
    tolerance_rel: float = 10.0  # percent of production's CER
    tolerance_abs: float = 0.5  # CER points
    promote: bool = False
    webhook: str | None = None
    work: str = "exp/retrain"
    form: str = "spelling"
    disfluency: str = "df"
    seed: int = 0
    parity_manifest: str | None = None  # korasr export's parity check (default: the recipe's dev manifest)
    overrides: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not 0 <= self.holdout < 1:
            raise RetrainError(f"holdout must be in [0, 1), not {self.holdout}")
        if self.replay_ratio < 0 or self.tolerance_abs < 0 or self.tolerance_rel < 0:
            raise RetrainError("replay_ratio and the tolerances must be ≥ 0")
        if "*" not in self.max_cer or any(v <= 0 for v in self.max_cer.values()):
            raise RetrainError(f"max_cer needs a default ('*') and positive bounds: {self.max_cer}")
        unknown = set(self.max_cer) - {"*"} - {Path(m).stem for m in self.eval_manifests}
        if unknown:
            raise RetrainError(f"max_cer names split(s) no --eval manifest has: {sorted(unknown)}")
        if not self.eval_manifests:
            raise RetrainError("the gate needs at least one fixed evaluation manifest (--eval)")
        for path in [*self.eval_manifests, *self.replay]:
            if not Path(path).is_file():
                raise RetrainError(f"{path}: no such manifest")
        if not Path(self.new_data).exists():
            raise RetrainError(f"{self.new_data}: no such folder or manifest (--new-data)")


# --- state --------------------------------------------------------------------------------------------------------


def source_id(new_data: str | os.PathLike[str]) -> str:
    """Names the drop: the SHA-256 of a manifest, or of a folder's scripts (its .trn files) and their names."""
    path = Path(new_data)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(path.rglob("*.trn")) or sorted(path.rglob("*.jsonl"))
    if not files:
        raise RetrainError(f"{path}: neither a manifest nor a folder with .trn scripts (KsponSpeech layout)")
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:12]


class State:
    """``state.json`` of one increment's run: the result of every finished stage."""

    def __init__(self, folder: Path, options: RetrainOptions):
        self.folder = folder
        self.path = folder / "state.json"
        folder.mkdir(parents=True, exist_ok=True)
        self.data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        self.data.setdefault("stages", {})
        self.data["options"] = asdict(options)

    def done(self, stage: str) -> dict | None:
        return self.data["stages"].get(stage)

    def current(self, stage: str, inputs: dict) -> dict | None:
        """``stage``'s result when it was made from exactly ``inputs``; else None, and the log names what changed."""
        result = self.done(stage)
        if result is None:
            return None
        recorded = result.get("inputs")
        if recorded == inputs:
            return result
        changed = changed_inputs(recorded or {}, inputs)
        log.info("retrain stage %s: finished before with other inputs (%s): redone", stage, ", ".join(changed))
        return None

    def finish(self, stage: str, result: dict, inputs: dict | None = None) -> dict:
        """Record ``stage``; every later stage's result, made from the stage's older result, is dropped."""
        for later in STAGES[STAGES.index(stage) + 1 :] if stage in STAGES else ():
            self.data["stages"].pop(later, None)
        entry = {**result, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if inputs is not None:
            entry["inputs"] = inputs
        self.data["stages"][stage] = entry
        write_json(self.path, self.data)
        return result

    def forget(self, stage: str) -> None:
        """Drop ``stage`` and every later one (``--redo``), with the folders they would otherwise resume from (a
        finished training's checkpoints would be taken up again and train nothing)."""
        import shutil

        for later in STAGES[STAGES.index(stage) :]:
            self.data["stages"].pop(later, None)
            for name in STAGE_FOLDERS.get(later, ()):
                shutil.rmtree(self.path.parent / name, ignore_errors=True)
        write_json(self.path, self.data)


def changed_inputs(old: dict, new: dict) -> list[str]:
    """The dotted names of the inputs that differ: ``overrides``, ``eval./path/eval_clean.jsonl``, ``parent``."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k}" for k in changed_inputs(a, b)]
        elif a != b:
            out.append(f"{key} ({a!r} → {b!r})" if not isinstance(a, dict | list) and len(repr(a) + repr(b)) < 80
                       else key)  # fmt: skip
    return out


def file_hashes(paths: list[str]) -> dict[str, str]:
    from korasr.fsutil import sha256_file

    return {str(Path(p).resolve()): sha256_file(p) for p in paths}


def fingerprint(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]


# --- 1. ingest ----------------------------------------------------------------------------------------------------


def audio_hash(path: str | os.PathLike[str]) -> tuple[str, float]:
    """SHA-256 of the decoded samples (int16, as stored) and the duration: the same audio in another container
    hashes the same."""
    import numpy as np
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="int16", always_2d=True)
    return hashlib.sha256(np.ascontiguousarray(data).tobytes() + str(rate).encode()).hexdigest(), len(data) / rate


def read_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RetrainError(f"{path}:{number}: not JSON ({e})") from None
    return rows


def _drop_rows(options: RetrainOptions, folder: Path) -> list[dict]:
    """The new data's rows: a manifest's, or train + dev of a prepared KsponSpeech-layout drop."""
    source = Path(options.new_data)
    if source.is_file():
        from korasr.text.normalize import normalize

        rows = read_rows(source)
        for row in rows:
            if isinstance(row.get("text"), str):
                row["text"] = normalize(row["text"], options.form, options.disfluency).text
            path = row.get("audio_filepath")
            if isinstance(path, str) and not Path(path).is_absolute():  # NeMo: relative to the manifest
                row["audio_filepath"] = str((source.parent / path).resolve())
        return rows
    from korasr.data.kspon import PrepareOptions, prepare_kspon

    prepared = prepare_kspon(source, folder / "prepared", audio_dir=folder / "audio",
                             options=PrepareOptions(form=options.form, disfluency=options.disfluency),
                             jobs=os.cpu_count() or 1, progress=False)  # fmt: skip
    return read_rows(prepared.manifests["train"]) + read_rows(prepared.manifests["dev"])


def _fixed_sets(eval_manifests: list[str]) -> tuple[dict[str, str], dict[str, str], set[tuple[int, int]]]:
    """Text → split and audio hash → split over the fixed evaluation splits, and the (frames, rate) of their audio."""
    import soundfile as sf

    texts: dict[str, str] = {}
    audio: dict[str, str] = {}
    lengths: set[tuple[int, int]] = set()
    for manifest in eval_manifests:
        split = Path(manifest).stem
        for row in read_rows(Path(manifest)):
            texts.setdefault(row["text"], split)
            path = Path(row["audio_filepath"])
            path = path if path.is_absolute() else Path(manifest).parent / path
            audio.setdefault(audio_hash(path)[0], split)
            info = sf.info(str(path))
            lengths.add((info.frames, info.samplerate))
    return texts, audio, lengths


def replay_leaks(replay: list[str], audio: dict[str, str], lengths: set[tuple[int, int]]) -> list[dict]:
    """Replayed rows whose audio is an utterance of a fixed split: they are left out of the mix. Only audio whose
    length (frames, rate) equals an evaluation utterance's is decoded and hashed, so a large replay manifest costs one
    header read a row. (Text alone is no leak here: a corpus's own train split shares short sentences with its
    evaluation splits by design.)"""
    import soundfile as sf

    leaks = []
    for manifest in replay:
        for number, row in enumerate(read_rows(Path(manifest)), 1):
            path = Path(str(row.get("audio_filepath", "")))
            path = path if path.is_absolute() else Path(manifest).parent / path
            try:
                info = sf.info(str(path))
                if (info.frames, info.samplerate) not in lengths:
                    continue
                digest = audio_hash(path)[0]
            except Exception as e:  # soundfile raises several kinds for unreadable audio
                leaks.append({"manifest": str(manifest), "row": number, "reason": f"unreadable audio {path}: {e}"})
                continue
            if digest in audio:
                leaks.append({"manifest": str(manifest), "row": number, "utt_id": row.get("utt_id"),
                              "reason": f"audio identical to an utterance of the fixed split {audio[digest]}"})  # fmt: skip
    return leaks


def _check_row(row: dict, texts: dict[str, str], audio: dict[str, str]) -> tuple[str | None, str | None]:
    """(reason, audio hash): the reason a row is refused, or None."""
    path, text = row.get("audio_filepath"), row.get("text")
    if not isinstance(path, str) or not isinstance(text, str):
        return "not a manifest row (needs audio_filepath and text)", None
    if not text.strip():
        return "empty text", None
    try:
        digest, seconds = audio_hash(path)
    except Exception as e:  # soundfile raises several kinds for unreadable audio
        return f"unreadable audio {path}: {e}", None
    if seconds <= 0:
        return "empty audio", None
    row["duration"] = round(seconds, 3)  # what the file holds, whatever the manifest said
    if digest in audio:
        return f"audio identical to an utterance of the fixed split {audio[digest]}", digest
    if text in texts:
        return f"text identical to an utterance of the fixed split {texts[text]}", digest
    return None, digest


def ingest(options: RetrainOptions, folder: Path) -> dict:
    rows = _drop_rows(options, folder / "ingest")
    texts, audio, lengths = _fixed_sets(options.eval_manifests)
    leaks = replay_leaks(options.replay, audio, lengths)
    accepted: list[tuple[dict, str]] = []
    refused: list[dict] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, 1):
        reason, digest = _check_row(row, texts, audio)
        if reason is None and digest in seen:
            reason = "audio repeated within the new data"
        if reason:
            refused.append({"row": number, "utt_id": row.get("utt_id"), "reason": reason})
            continue
        seen.add(digest)  # type: ignore[arg-type]
        accepted.append((row, digest))  # type: ignore[arg-type]
    if not accepted:
        raise RetrainError(f"{options.new_data}: no utterance left after the checks ({len(refused)} refused; "
                           f"{folder / 'ingest' / 'refused.jsonl'})")  # fmt: skip
    train_rows, held = [], []
    for row, digest in accepted:
        (held if int(digest[:8], 16) / 2**32 < options.holdout else train_rows).append(row)
    out = folder / "ingest"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "increment_train.jsonl", "heldout": out / "increment_heldout.jsonl"}
    paths["replay_refused"] = out / "replay_refused.jsonl"
    for path, subset in ((paths["train"], train_rows), (paths["heldout"], held), (out / "refused.jsonl", refused),
                         (paths["replay_refused"], leaks)):  # fmt: skip
        with atomic_open(path) as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in subset)
    increment = hashlib.sha256("".join(sorted(d for _, d in accepted)).encode()).hexdigest()[:12]
    reasons: dict[str, int] = {}
    for r in refused:
        key = r["reason"].split(" ", 3)[0] if r["reason"].startswith("unreadable") else r["reason"]
        reasons[key] = reasons.get(key, 0) + 1
    log.info("ingest: %d rows, %d accepted (%d train, %d held out), %d refused %s; %d replayed rows left out (their "
             "audio is in a fixed split: %s)", len(rows), len(accepted), len(train_rows), len(held), len(refused),
             reasons, len(leaks), paths["replay_refused"])  # fmt: skip
    return {"increment": increment, "rows": len(rows), "train": len(train_rows), "heldout": len(held),
            "refused": len(refused), "refused_by_reason": reasons, "replay_refused": len(leaks),
            "manifests": {k: str(v) for k, v in paths.items()},
            "hours": round(sum(float(r.get("duration", 0)) for r, _ in accepted) / 3600, 4)}  # fmt: skip


# --- 2. train -----------------------------------------------------------------------------------------------------


def production_version(name: str):  # type: ignore[no-untyped-def]
    """The registered version at @production, or None only when the registry answered that there is none (no such
    model, or no ``production`` alias ever). A registry that does not answer, or an alias that points at a deleted
    version, raises :class:`RetrainError` naming the tracking URI and the cause: a retraining never runs blind."""
    from korasr import registry

    try:
        return registry.production(name)
    except registry.RegistryError as e:
        raise RetrainError(
            f"cannot tell what is in production, so nothing is trained, gated or promoted: {e}"
        ) from None


def _mix(options: RetrainOptions, increment: Path, out: Path, leaks: Path | None = None) -> dict:
    rows = read_rows(increment)
    left_out = {(r["manifest"], r["row"]) for r in read_rows(leaks)} if leaks and leaks.is_file() else set()
    earlier = [r for m in options.replay for n, r in enumerate(read_rows(Path(m)), 1) if (str(m), n) not in left_out]
    k = min(len(earlier), round(options.replay_ratio * len(rows)))
    rng = random.Random(options.seed)
    mixed = rows + rng.sample(earlier, k)
    rng.shuffle(mixed)
    with atomic_open(out) as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in mixed)
    return {"increment_utterances": len(rows), "replayed_utterances": k, "manifest": str(out)}


def _korasr(*args: str) -> str:
    """Run a korasr subcommand in this environment; its stderr (progress, logs) passes through; its stdout's last
    line (the artifact it made) is returned."""
    proc = subprocess.run([sys.executable, "-m", "korasr.cli", *args], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RetrainError(f"korasr {args[0]} failed (exit {proc.returncode}): {' '.join(args)}")
    return proc.stdout.strip().splitlines()[-1]


def train_stage(options: RetrainOptions, folder: Path, ingest_result: dict, parent: int | None, out: Path) -> dict:
    leaks = ingest_result["manifests"].get("replay_refused")
    out.mkdir(parents=True, exist_ok=True)
    mix = _mix(
        options, Path(ingest_result["manifests"]["train"]), out / "train_mix.jsonl", Path(leaks) if leaks else None
    )
    args = ["train", "--recipe", options.recipe]
    extra = Path(options.recipe) / "retrain.yaml"
    if extra.is_file():
        args += ["--config", str(extra)]
    if parent is not None:
        args += ["--init", f"models:/{options.name}/{parent}"]
    args += [f"model.train_ds.manifest_filepath={mix['manifest']}", f"exp_manager.exp_dir={out}", *options.overrides]
    log.info("train: %s (%d increment + %d replayed utterances) in %s",
             f"fine-tuning {options.name} version {parent}" if parent is not None else "from scratch",
             mix["increment_utterances"], mix["replayed_utterances"], out)  # fmt: skip
    nemo = _korasr(*args)
    if not nemo.endswith(".nemo") or not Path(nemo).is_file():
        raise RetrainError(f"korasr train did not end with a .nemo: {nemo!r}")
    from korasr.fsutil import sha256_file

    return {**mix, "nemo": nemo, "nemo_sha256": sha256_file(nemo), "parent": parent}


# --- 3. evaluate, 4. gate -----------------------------------------------------------------------------------------


def evaluate_stage(options: RetrainOptions, ingest_result: dict, trained: dict, where: Path) -> dict:
    from korasr import registry
    from korasr.evaluate import evaluate

    manifests = list(options.eval_manifests)
    if ingest_result["heldout"]:
        manifests.append(ingest_result["manifests"]["heldout"])
    out = {"candidate": {"model": trained["nemo"], "dir": str(where / "candidate")}}
    evaluate(trained["nemo"], manifests, out["candidate"]["dir"], progress=False)
    if trained["parent"] is not None:
        version = registry.show(options.name, version=trained["parent"])
        nemo = registry.fetch(version, "nemo")
        out["production"] = {"model": str(nemo), "version": version.version, "dir": str(where / "production")}
        evaluate(nemo, manifests, out["production"]["dir"], progress=False)
    return out


def _utterance_errors(hyp_file: Path) -> tuple[list[int], list[int]]:
    from korasr.metrics import cer_detail
    from korasr.report import read_hypotheses

    refs, hyps = read_hypotheses(hyp_file)
    errors, lengths = [], []
    for r, h in zip(refs, hyps, strict=True):
        d = cer_detail([r], [h])
        errors.append(d["sub"] + d["del"] + d["ins"])
        lengths.append(d["ref"])
    return errors, lengths


def paired_interval(cand: tuple[list[int], list[int]], prod: tuple[list[int], list[int]], rounds: int = 1000,
                    seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """95% interval of CER(candidate) − CER(production) in points, resampling utterances with replacement (paired
    bootstrap, Bisani & Ney 2004): the same utterances for both models in each round."""
    import numpy as np

    ce, n = np.asarray(cand[0], float), np.asarray(cand[1], float)
    pe = np.asarray(prod[0], float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(n), size=(rounds, len(n)))
    total = np.maximum(n[picks].sum(axis=1), 1.0)
    diffs = 100 * (ce[picks].sum(axis=1) - pe[picks].sum(axis=1)) / total
    low, high = np.percentile(diffs, [2.5, 97.5])
    return round(float(low), 2), round(float(high), 2)


def split_entry(splits: dict, split: str) -> tuple[str, dict]:
    """A split's scores in a report: ``split`` itself, or for a streaming model its first (default) look-ahead
    (``split · look-ahead 480 ms``)."""
    if split in splits:
        return split, splits[split]
    for name, scores in splits.items():
        if name.startswith(f"{split} · "):
            return name, scores
    raise RetrainError(f"the evaluation report has no split {split!r}: {sorted(splits)}")


def _hyp_file(report_dir: Path, report_name: str) -> Path:
    slug = report_name.partition(" · ")[2]
    stem = report_name.partition(" · ")[0]
    if not slug:
        return report_dir / f"{stem}.hyp.jsonl"
    return report_dir / f"{stem}.{re.sub(r'[^0-9A-Za-z.]+', '_', slug).strip('_')}.hyp.jsonl"


def gate_rows(options: RetrainOptions, evaluated: dict) -> list[dict]:
    cand_dir = Path(evaluated["candidate"]["dir"])
    cand = json.loads((cand_dir / "report.json").read_text(encoding="utf-8"))["splits"]
    prod = None
    if "production" in evaluated:
        prod_dir = Path(evaluated["production"]["dir"])
        prod = json.loads((prod_dir / "report.json").read_text(encoding="utf-8"))["splits"]
    rows = []
    for manifest in options.eval_manifests:
        split = Path(manifest).stem
        name, c = split_entry(cand, split)
        bound = options.max_cer.get(split, options.max_cer["*"])
        row = {"split": name, "utterances": c["utterances"], "characters": c["cer_counts"]["ref"],
               "candidate_cer": c["cer"], "max_cer": bound, "absolute_ok": c["cer"] <= bound}  # fmt: skip
        if prod is not None:
            p = split_entry(prod, split)[1]
            allowed = p["cer"] + max(options.tolerance_abs, options.tolerance_rel / 100 * p["cer"])
            interval = paired_interval(_utterance_errors(_hyp_file(cand_dir, name)),
                                       _utterance_errors(_hyp_file(prod_dir, name)))  # fmt: skip
            row.update(production_cer=p["cer"], delta=round(c["cer"] - p["cer"], 2), allowed=round(allowed, 2),
                       relative_ok=c["cer"] <= allowed, delta_95=interval)  # fmt: skip
        row["passed"] = row["absolute_ok"] and row.get("relative_ok", True)
        rows.append(row)
    return rows


def format_gate(rows: list[dict], heldout: dict | None = None) -> str:
    lines = ["| split | utts | chars | production CER | candidate CER | Δ (95% interval) | rule | result |",
             "|---|---:|---:|---:|---:|---|---|---|"]  # fmt: skip
    for r in rows:
        prod = f"{r['production_cer']:.2f}" if "production_cer" in r else "—"
        delta = f"{r['delta']:+.2f} ({r['delta_95'][0]:+.2f} … {r['delta_95'][1]:+.2f})" if "delta" in r else "—"
        rule = [f"≤ {r['max_cer']:g} ({'ok' if r['absolute_ok'] else 'over'})"]
        if "allowed" in r:
            rule.append(f"≤ production + tolerance = {r['allowed']:.2f} ({'ok' if r['relative_ok'] else 'worse'})")
        lines.append(f"| {r['split']} | {r['utterances']} | {r['characters']} | {prod} | {r['candidate_cer']:.2f} | "
                     f"{delta} | {'; '.join(rule)} | {'PASS' if r['passed'] else 'FAIL'} |")  # fmt: skip
    if heldout:
        prod = f"{heldout['production_cer']:.2f}" if heldout.get("production_cer") is not None else "—"
        lines.append(f"| increment held out (not gated) | {heldout['utterances']} | {heldout['characters']} | {prod} | "
                     f"{heldout['candidate_cer']:.2f} | — | — | — |")  # fmt: skip
    return "\n".join(lines)


def _heldout_row(evaluated: dict) -> dict | None:
    cand = json.loads((Path(evaluated["candidate"]["dir"]) / "report.json").read_text(encoding="utf-8"))["splits"]
    try:
        c = split_entry(cand, "increment_heldout")[1]
    except RetrainError:
        return None
    row = {"utterances": c["utterances"], "candidate_cer": c["cer"], "characters": c["cer_counts"]["ref"]}
    if "production" in evaluated:
        prod = json.loads((Path(evaluated["production"]["dir"]) / "report.json").read_text(encoding="utf-8"))
        row["production_cer"] = split_entry(prod["splits"], "increment_heldout")[1]["cer"]
    return row


def gate_stage(options: RetrainOptions, folder: Path, evaluated: dict) -> dict:
    rows = gate_rows(options, evaluated)
    passed = all(r["passed"] for r in rows)
    table = format_gate(rows, _heldout_row(evaluated))
    (folder / "gate.md").write_text(table + "\n", encoding="utf-8")
    log.info("gate %s:\n%s", "PASSED" if passed else "FAILED", table)
    return {"passed": passed, "rows": rows, "table": table,
            "rules": {"max_cer": options.max_cer, "tolerance_abs": options.tolerance_abs,
                      "tolerance_rel": options.tolerance_rel}}  # fmt: skip


# --- 5. export, register; 6. notify -------------------------------------------------------------------------------


def _recipe_dev(recipe: str) -> str | None:
    from korasr.train import compose, recipe_configs

    cfg = compose(recipe_configs(recipe))
    return str(cfg.model.validation_ds.manifest_filepath) if "validation_ds" in cfg.model else None


def _parity_manifest(options: RetrainOptions) -> str | None:
    key = "model.validation_ds.manifest_filepath="
    overridden = [o.split("=", 1)[1] for o in options.overrides if o.startswith(key)]  # the dev the training used
    return options.parity_manifest or (overridden[-1] if overridden else _recipe_dev(options.recipe))


def export_stage(options: RetrainOptions, folder: Path, trained: dict) -> dict:
    parity = _parity_manifest(options)
    args = ["export", "--model", trained["nemo"], "--out", str(folder / "export"), "--force"]
    if parity and Path(parity).is_file():
        args += ["--parity-manifest", parity]
    return {"export": _korasr(*args)}


def register_stage(options: RetrainOptions, folder: Path, trained: dict, exported: dict, evaluated: dict) -> dict:
    """Register the candidate @candidate; a version already made from the same ``.nemo`` (an earlier run whose
    state was lost or redone) is reused, so a candidate is never registered twice."""
    from korasr import registry

    for v in registry.list_versions(options.name):
        if json.loads(v.tags.get("lineage", "{}")).get("source_model_sha256") == trained["nemo_sha256"]:
            log.info("register: %s version %d was made from this candidate already: reused", options.name, v.version)
            return {"version": v.version, "reused": True}
    report = Path(evaluated["candidate"]["dir"]) / "report.json"
    version = registry.register(exported["export"], options.name, report=report, parent=trained["parent"],
                                alias="candidate", nemo=trained["nemo"], scored_on=options.eval_manifests,
                                description=f"korasr retrain {folder.name}")  # fmt: skip
    return {"version": version.version}


def promote_stage(options: RetrainOptions, trained: dict, registered: dict) -> dict:
    """Move ``production`` to the registered version, only if it still names the version the gate compared against
    (``trained["parent"]``; None: nothing was in production). MLflow has no atomic compare-and-set on an alias: the
    alias is read again immediately before it is set, which closes the window to one round trip."""
    from korasr import registry

    if not options.promote:
        return {"promoted": False, "reason": "no --promote (PROMOTE=1)"}
    now = production_version(options.name)
    number = now.version if now is not None else None
    if number == registered["version"]:
        return {"promoted": True, "already": True}
    if number != trained["parent"]:
        raise RetrainError(
            f"{options.name}: production moved since the gate: it compared version {registered['version']} against "
            f"{_named(trained['parent'])}, and production is now {_named(number)}; not promoting a stale decision "
            "(rerun with --redo train to fine-tune from and gate against the new production)"
        )
    registry.promote(options.name, registered["version"], "production")
    return {"promoted": True, "previous": number}


def _named(version: int | None) -> str:
    return f"version {version}" if version is not None else "nothing (no production)"


def notify(webhook: str, payload: dict) -> dict:
    """POST ``payload`` as JSON; up to WEBHOOK_TRIES tries of WEBHOOK_TIMEOUT_S each, retried as ``korasr/retry.py``
    says (network errors, 408, 429 and 5xx; jittered exponential back-off; a 429's or 503's Retry-After honoured up to
    WEBHOOK_MAX_WAIT_S, beyond which it gives up); the outcome, never an exception."""
    from korasr.retry import Backoff, retried, retry_after_s

    body = json.dumps(payload, ensure_ascii=False).encode()
    backoff, last = Backoff(WEBHOOK_BACKOFF_S, WEBHOOK_MAX_WAIT_S), ""
    for attempt in range(1, WEBHOOK_TRIES + 1):
        asked = None
        try:
            request = urllib.request.Request(webhook, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
                return {"delivered": True, "status": response.status, "attempts": attempt}
        except urllib.request.HTTPError as e:  # an answer: retried only when it may change
            last = f"HTTP {e.code}: {e.reason}"
            if not retried(e.code):
                break
            asked = retry_after_s(e.code, e.headers.get("Retry-After"))
        except ValueError as e:  # not a URL urllib can send to: another try would not change it
            last = f"{type(e).__name__}: {e}"
            break
        except Exception as e:  # urllib raises URLError, TimeoutError, OSError
            last = f"{type(e).__name__}: {e}"
        if attempt == WEBHOOK_TRIES:
            break  # no wait after the last try
        if asked is not None and asked > WEBHOOK_MAX_WAIT_S:
            last += f" (it asked to retry after {asked:g} s, more than {WEBHOOK_MAX_WAIT_S:g} s: not waiting)"
            break
        time.sleep(backoff.wait_s(attempt, asked))
    log.warning("webhook %s not delivered after %d tries: %s", webhook, attempt, last)
    return {"delivered": False, "error": last, "attempts": attempt}


def message(options: RetrainOptions, state: State) -> dict:
    gate = state.done("gate") or {}
    registered = state.done("register")
    promoted = (state.done("promote") or {}).get("promoted")
    ingest_result = state.done("ingest") or {}
    if not gate.get("passed"):
        outcome = "FAILED the gate: nothing registered, production unchanged"
    elif registered:
        moved = "production moved to it" if promoted else "production unchanged (PROMOTE=1 moves it)"
        outcome = f"passed: registered as version {registered['version']} @candidate; {moved}"
    else:
        outcome = "passed"
    text = (f"*korasr retrain* `{options.name}` increment `{ingest_result.get('increment')}` "
            f"({ingest_result.get('train', 0)} train + {ingest_result.get('heldout', 0)} held-out utterances, "
            f"{ingest_result.get('refused', 0)} refused): {outcome}\n```\n{gate.get('table', '')}\n```")  # fmt: skip
    return {"text": text, "korasr": {"model": options.name, "increment": ingest_result.get("increment"),
                                     "passed": bool(gate.get("passed")), "gate": gate.get("rows"),
                                     "version": (registered or {}).get("version"),
                                     "promoted": bool(promoted)}}  # fmt: skip


# --- the pipeline -------------------------------------------------------------------------------------------------


def retrain(options: RetrainOptions, redo: str | None = None, until: str | None = None) -> dict:
    """Run the stages whose recorded inputs differ from this run's (``redo``: from that one afresh) up to ``until``
    (default: all). Returns the state; raises :class:`GateRejected` after notifying when the gate failed, and
    :class:`RetrainError` before any training when the registry cannot say what is in production."""
    options.validate()
    production = production_version(options.name)  # checked first: an outage stops the run before any work
    folder = Path(options.work).resolve() / source_id(options.new_data)
    state = State(folder, options)
    if redo:
        state.forget(redo)
    log.info("retrain %s: working in %s; production: %s", options.name, folder,
             _named(production.version if production else None))  # fmt: skip
    for stage in STAGES:
        inputs = stage_inputs(stage, options, state, production)
        if state.current(stage, inputs) is None:
            _run_stage(stage, options, folder, state, inputs)
        if stage == "gate" and not state.done("gate")["passed"]:
            notify_inputs = stage_inputs("notify", options, state, production)
            if options.webhook and state.current("notify", notify_inputs) is None:
                state.finish("notify", notify(options.webhook, message(options, state)), notify_inputs)
            raise GateRejected(f"{options.name}: the candidate failed the gate ({folder / 'gate.md'}):\n"
                               f"{state.done('gate')['table']}")  # fmt: skip
        if stage == until:
            break
    return state.data


def _parent(options: RetrainOptions, state: State, production, inputs: dict) -> int | None:  # type: ignore[no-untyped-def]
    """The version to fine-tune from and gate against: production's. A finished training whose inputs differ only in
    its parent is this drop's own run: when production is this drop's registered candidate (it was promoted), the run
    is complete and keeps its parent; when production moved elsewhere, the run stops naming the move."""
    number = production.version if production is not None else None
    trained = state.done("train")
    if trained is None or "inputs" not in trained:
        return number
    recorded = trained["inputs"]
    if recorded == {**inputs, "parent": recorded.get("parent")} and recorded.get("parent") != number:
        registered = state.done("register") or {}
        if number is not None and registered.get("version") == number:
            return recorded.get("parent")
        raise RetrainError(
            f"{options.name}: this drop's candidate was fine-tuned from and gated against "
            f"{_named(recorded.get('parent'))}, and production is now {_named(number)}: its gate is stale. Rerun with "
            "--redo train to fine-tune from the new production (nothing was trained, registered or promoted)"
        )
    return number


def stage_inputs(stage: str, options: RetrainOptions, state: State, production) -> dict:  # type: ignore[no-untyped-def]
    """Everything ``stage``'s result depends on: the options that reach it and the results it is made from."""
    done = state.done
    if stage == "ingest":
        return {"new_data": source_id(options.new_data), "holdout": options.holdout, "form": options.form,
                "disfluency": options.disfluency, "eval": file_hashes(options.eval_manifests),
                "replay": file_hashes(options.replay)}  # fmt: skip
    if stage == "train":
        ingested = done("ingest") or {}
        recipe = sorted(str(p) for p in Path(options.recipe).glob("*.yaml"))
        inputs = {"increment": file_hashes([ingested["manifests"]["train"]]) if ingested else None,
                  "replay_refused": ingested.get("replay_refused"), "replay": file_hashes(options.replay),
                  "replay_ratio": options.replay_ratio, "seed": options.seed, "overrides": list(options.overrides),
                  "recipe": file_hashes(recipe), "parent": None}  # fmt: skip
        inputs["parent"] = _parent(options, state, production, inputs)
        return inputs
    if stage == "evaluate":
        trained = done("train") or {}
        ingested = done("ingest") or {}
        heldout = ingested.get("manifests", {}).get("heldout")
        return {"candidate": trained.get("nemo_sha256"), "production": trained.get("parent"),
                "eval": file_hashes(options.eval_manifests),
                "heldout": file_hashes([heldout]) if heldout and Path(heldout).is_file() else None}  # fmt: skip
    if stage == "gate":
        return {"evaluate": fingerprint((done("evaluate") or {}).get("inputs", {})),
                "max_cer": options.max_cer, "tolerance_abs": options.tolerance_abs,
                "tolerance_rel": options.tolerance_rel}  # fmt: skip
    if stage == "export":
        parity = _parity_manifest(options)
        return {"candidate": (done("train") or {}).get("nemo_sha256"),
                "parity": file_hashes([parity]) if parity and Path(parity).is_file() else None}  # fmt: skip
    if stage == "register":
        return {"name": options.name, "candidate": (done("train") or {}).get("nemo_sha256"),
                "export": (done("export") or {}).get("export")}  # fmt: skip
    if stage == "promote":
        return {"promote": options.promote, "version": (done("register") or {}).get("version"),
                "gate": fingerprint((done("gate") or {}).get("inputs", {}))}  # fmt: skip
    return {"webhook": options.webhook, "gate": fingerprint((done("gate") or {}).get("inputs", {})),
            "passed": (done("gate") or {}).get("passed"), "version": (done("register") or {}).get("version"),
            "promoted": (done("promote") or {}).get("promoted")}  # fmt: skip


def _run_stage(stage: str, options: RetrainOptions, folder: Path, state: State, inputs: dict) -> None:
    started = time.perf_counter()
    log.info("retrain stage %s", stage)
    done = state.done
    if stage == "ingest":
        result = ingest(options, folder)
    elif stage == "train":
        out = folder / "train" / fingerprint(inputs)  # other settings train in a folder of their own
        result = train_stage(options, folder, done("ingest"), inputs["parent"], out)  # type: ignore[arg-type]
    elif stage == "evaluate":
        where = folder / "eval" / fingerprint(inputs)
        result = evaluate_stage(options, done("ingest"), done("train"), where)  # type: ignore[arg-type]
    elif stage == "gate":
        result = gate_stage(options, folder, done("evaluate"))  # type: ignore[arg-type]
    elif stage == "export":
        result = export_stage(options, folder, done("train"))  # type: ignore[arg-type]
    elif stage == "register":
        result = register_stage(options, folder, done("train"), done("export"), done("evaluate"))  # type: ignore[arg-type]
    elif stage == "promote":
        result = promote_stage(options, done("train"), done("register"))  # type: ignore[arg-type]
    else:
        result = notify(options.webhook, message(options, state)) if options.webhook else {"skipped": "no webhook"}
    state.finish(stage, {**result, "seconds": round(time.perf_counter() - started, 1)}, inputs)
