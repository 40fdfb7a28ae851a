"""`korasr release RUN --out DIR` (`make release`): a trained run as a folder a model hub serves as it is
(``huggingface-cli upload DIR``), and `korasr release --check DIR`.

The folder::

    README.md          the model card: YAML front matter in the hub's conventions (language, license, datasets,
                       model-index with CER per split and the normalization it was scored under), then what the
                       model is, how it was trained, results with the metric definitions, limits, how to use it
    <name>.nemo        the trained model (NeMo's restore_from, korasr train --init)
    export/            the export folder: ONNX graphs, tokens, model.json with its parity gates' results
    tokenizer/         the SentencePiece tokenizer (tokenizer.model, tokenizer.yaml)
    lm/                a token n-gram LM, when one is bundled (--lm)
    eval/              the evaluation report the card's numbers come from (report.json, report.md)
    training/          the run's resolved configuration (korasr_run.yaml) and its steps, time and hardware
    release.json       what was released from where: run, commit, versions, files
    SHA256SUMS         every file's SHA-256 (``sha256sum -c`` reads it too)

``korasr transcribe|serve --model DIR`` and ``korasr train --init DIR`` take the folder as it is. No torch or
NeMo import here: the run's files are copied, not loaded.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import yaml

from korasr.errors import KorasrError
from korasr.fsutil import ArtifactKind, sha256_file, staged_dir, write_json

SUMS = "SHA256SUMS"
META = "release.json"
FORMAT = "korasr-release/1"
RELEASE_FOLDER = ArtifactKind("release", (META, f'"format": "{FORMAT}"'),
                              ("README.md", "*.nemo", "export", "tokenizer", "lm", "eval", "training", META, SUMS))  # fmt: skip
LIMITS = {
    "sample": "Trained on korasr's synthetic sample corpus (eSpeak NG reading generated Korean sentences): it knows "
    "synthetic speech only and will not transcribe human speech usefully. It exists to show and test the pipeline.",
    "kspon": "Trained on KsponSpeech (spontaneous conversational Korean, AIHub): read or broadcast speech, other "
    "microphones, dialects and domain words may score worse than the numbers below. KsponSpeech's terms of use apply "
    "to models trained on it; check them before publishing.",
}


class ReleaseError(KorasrError, ValueError):
    pass


def is_release(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / META).is_file() and (Path(path) / SUMS).is_file()


def model_path(path: str | os.PathLike[str], part: str = "export") -> Path:
    """A release folder's ``export`` folder (or its ``.nemo``); any other path as it is."""
    path = Path(path)
    if not is_release(path):
        return path
    if part == "nemo":
        return path / json.loads((path / META).read_text(encoding="utf-8"))["nemo"]
    return path / "export"


def _exempt(rel: Path) -> bool:
    """The checksums themselves and korasr's folder marker, at the top of the folder only: a file of either name
    deeper down is an extra file like any other."""
    return len(rel.parts) == 1 and (rel.name == SUMS or rel.name.startswith(".korasr"))


def _files(folder: Path) -> list[Path]:
    """Every file of a release, as the checksums list them (the top-level checksums and folder marker aside)."""
    return sorted(rel for rel in (p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
                  if not _exempt(rel))  # fmt: skip


def check(folder: str | os.PathLike[str]) -> dict:
    """Verify every checksum of a release folder; raise :class:`ReleaseError` naming what is missing, changed or
    unlisted. Returns the counts."""
    folder = Path(folder)
    if not (folder / SUMS).is_file():
        raise ReleaseError(f"{folder}: no {SUMS}: not a korasr release folder")
    listed = {}
    for number, line in enumerate((folder / SUMS).read_text(encoding="utf-8").splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ReleaseError(f"{folder / SUMS}: line {number} is not '<sha256>  <path>'")
        listed[name] = digest
    present = {str(p) for p in _files(folder)}
    missing = sorted(set(listed) - present)
    unlisted = sorted(present - set(listed))
    changed = sorted(name for name in set(listed) & present if sha256_file(folder / name) != listed[name])
    if missing or unlisted or changed:
        parts = [f"{what}: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}"
                 for what, names in (("missing", missing), ("changed", changed), ("not in SHA256SUMS", unlisted))
                 if names]  # fmt: skip
        raise ReleaseError(f"{folder}: " + "; ".join(parts))
    return {"files": len(listed), "bytes": sum((folder / n).stat().st_size for n in listed)}


def _run_record(run: Path) -> dict:
    path = run / "korasr_run.yaml"
    if not path.is_file():
        raise ReleaseError(f"{run}: no korasr_run.yaml: not a korasr training run folder")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _hours(manifests: list[str]) -> float | None:
    seconds = 0.0
    for manifest in manifests:
        if not Path(manifest).is_file():
            return None
        with open(manifest, encoding="utf-8") as f:
            seconds += sum(float(json.loads(line).get("duration", 0)) for line in f if line.strip())
    return seconds / 3600


def release(run: str | os.PathLike[str], out: str | os.PathLike[str], *, name: str | None = None,
            license: str = "other", lm: str | os.PathLike[str] | None = None, export: str | os.PathLike[str] | None = None,
            evaluation: str | os.PathLike[str] | None = None, force: bool = False) -> Path:  # fmt: skip
    """Write the release folder of a training run (its ``.nemo``; ``export/`` and ``eval/`` beside it unless
    ``export`` and ``evaluation`` name other folders) to ``out``."""
    run, out = Path(run), Path(out)
    if run.is_file() and run.suffix == ".nemo":
        run = run.parent
    nemos = sorted(run.glob("*.nemo"))
    if len(nemos) != 1:
        raise ReleaseError(f"{run}: a run folder holds one .nemo (korasr train's output); found {len(nemos)}")
    export = Path(export) if export else run / "export"
    evaluation = Path(evaluation) if evaluation else run / "eval"
    report_path = evaluation / "report.json"
    for needed, how in ((export / "model.json", "make export MODEL=…"), (report_path, "make evaluate MODEL=…")):
        if not needed.is_file():
            raise ReleaseError(f"{run}: no {needed}: run `{how}` first (a release carries both)")
    record = _run_record(run)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    meta = json.loads((export / "model.json").read_text(encoding="utf-8"))
    if meta.get("source_sha256") and meta["source_sha256"] != sha256_file(nemos[0]):
        raise ReleaseError(f"{export}: exported from another .nemo than {nemos[0].name} (source_sha256 differs): "
                           "export this run again")  # fmt: skip
    tokenizer = Path(str(record.get("model", {}).get("tokenizer", {}).get("dir", "")))
    if not (tokenizer / "tokenizer.model").is_file():
        raise ReleaseError(f"{run}: the tokenizer it trained with ({tokenizer}) is gone")
    if lm is not None and not (Path(lm) / "lm.json").is_file():
        raise ReleaseError(f"--lm {lm}: no lm.json: not a korasr LM folder (make lm)")
    korasr = record.get("korasr", {})
    recipe = str(korasr.get("recipe", "model"))
    name = name or f"korasr-{recipe}-{nemos[0].stem.replace('_', '-')}"
    training = {}
    if (run / "training.json").is_file():
        training = json.loads((run / "training.json").read_text(encoding="utf-8"))
    with staged_dir(out, RELEASE_FOLDER, force=force) as staging:
        shutil.copy2(nemos[0], staging / nemos[0].name)
        shutil.copytree(export, staging / "export", ignore=shutil.ignore_patterns(".korasr*"))
        (staging / "tokenizer").mkdir()
        for f in ("tokenizer.model", "tokenizer.vocab", "vocab.txt", "tokenizer.yaml", "report.json"):
            if (tokenizer / f).is_file():
                shutil.copy2(tokenizer / f, staging / "tokenizer" / f)
        if lm is not None:
            shutil.copytree(lm, staging / "lm", ignore=shutil.ignore_patterns(".korasr*"))
        (staging / "training").mkdir()
        for f in ("korasr_run.yaml", "training.json"):
            if (run / f).is_file():
                shutil.copy2(run / f, staging / "training" / f)
        (staging / "eval").mkdir()
        for f in ("report.json", "report.md", "error_rates.png"):
            if (evaluation / f).is_file():
                shutil.copy2(evaluation / f, staging / "eval" / f)
        info = {"format": FORMAT, "name": name, "nemo": nemos[0].name, "run": str(run.resolve()),
                "git_commit": korasr.get("git_commit"), "versions": korasr.get("versions"),
                "released": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "lm": lm is not None}  # fmt: skip
        write_json(staging / META, info)
        card = model_card(name, record, report, meta, training, license=license, recipe=recipe,
                          hours=_hours(list(korasr.get("source_manifests", {}).get("train_ds", []))),
                          nemo=nemos[0].name, lm=lm is not None)  # fmt: skip
        (staging / "README.md").write_text(card, encoding="utf-8")
        sums = [f"{sha256_file(staging / p)}  {p}" for p in _files(staging)]
        (staging / SUMS).write_text("\n".join(sums) + "\n", encoding="utf-8")
    return out


def _pieces(meta: dict) -> str:
    size = meta.get("vocab_size")
    if isinstance(size, int) and meta.get("blank_id") == size - 1:
        return f"{size - 1} pieces and the CTC blank"
    return f"{size} outputs"


def _front_matter(name: str, report: dict, license: str, recipe: str) -> dict:
    normalization = report.get("meta", {}).get("normalization", {})
    norm_text = ", ".join(f"{k} {v}" for k, v in normalization.items() if v is not None)
    dataset = {"sample": ("korasr synthetic sample corpus", "korasr-sample"), "kspon": ("KsponSpeech", "ksponspeech")}
    dataset_name, dataset_type = dataset.get(recipe, (recipe, recipe))
    results = [{"task": {"type": "automatic-speech-recognition", "name": "Automatic Speech Recognition"},
                "dataset": {"name": f"{dataset_name} {split}", "type": dataset_type, "split": split},
                "metrics": [{"type": "cer", "value": round(float(s["cer"]), 2),
                             "name": f"CER (spaces removed; normalization: {norm_text})"},
                            {"type": "wer", "value": round(float(s["wer"]), 2), "name": "WER"}]}
               for split, s in report.get("splits", {}).items()]  # fmt: skip
    return {"language": ["ko"], "license": license, "library_name": "nemo", "pipeline_tag": "automatic-speech-recognition",
            "tags": ["automatic-speech-recognition", "speech", "korean", "nemo", "fastconformer", "ctc", "onnx", "korasr"],
            "datasets": [dataset_type], "metrics": ["cer", "wer"],
            "model-index": [{"name": name, "results": results}]}  # fmt: skip


def model_card(name: str, record: dict, report: dict, meta: dict, training: dict, *, license: str, recipe: str,
               hours: float | None, nemo: str, lm: bool) -> str:  # fmt: skip
    """The README.md of a release: front matter, then prose and tables from the run's own records."""
    korasr, model = record.get("korasr", {}), record.get("model", {})
    encoder = model.get("encoder", {})
    params = f"{encoder.get('n_layers', '?')} layers, d_model {encoder.get('d_model', '?')}, " \
             f"{encoder.get('subsampling_factor', '?')}× subsampling"  # fmt: skip
    streaming = (meta.get("streaming") or {}) if isinstance(meta.get("streaming"), dict) else {}
    hardware = training.get("hardware") or korasr.get("hardware") or {}
    hw = ", ".join(hardware.get("gpus") or []) or (f"{hardware.get('cpu')} ({hardware.get('cpu_cores')} cores)"
                                                   if hardware else "not recorded")  # fmt: skip
    init = korasr.get("init_source")
    lines = ["---", yaml.safe_dump(_front_matter(name, report, license, recipe), allow_unicode=True, sort_keys=False).strip(),
             "---", "", f"# {name}", "",
             f"A Korean speech-recognition model: NeMo FastConformer-CTC ({params}) over a "
             f"{meta.get('unit', '?')} tokenizer ({_pieces(meta)}), "
             f"{'cache-aware streaming, ' if streaming else ''}trained with korasr "
             f"(recipe `{recipe}`). Input: 16 kHz mono audio; output: Korean text in the normalization below.", "",
             "## Files", "",
             "| file | what |", "|---|---|",
             f"| `{nemo}` | the NeMo model (`EncDecCTCModelBPE.restore_from`) |",
             "| `export/` | ONNX graphs (`model.onnx` waveform in, `encoder.onnx` features in for sherpa-onnx), "
             "`tokens.txt`, `model.json` with the parity gates' results |",
             "| `tokenizer/` | the SentencePiece tokenizer |",
             *(["| `lm/` | a token n-gram LM for beam search |"] if lm else []),
             "| `eval/` | the evaluation report the results come from |",
             "| `training/` | the run's resolved configuration (`korasr_run.yaml`) and its steps, time and hardware |",
             f"| `{SUMS}` | SHA-256 of every file (`korasr release --check .` or `sha256sum -c {SUMS}`) |", "",
             "## Training", "",
             f"- command: `{korasr.get('command') or report.get('meta', {}).get('command', 'not recorded')}`",
             f"- korasr commit `{korasr.get('git_commit', '?')}`; "
             + ", ".join(f"{k} {v}" for k, v in (korasr.get("versions") or {}).items()),
             f"- data: {f'{hours:.2f} hours' if hours is not None else 'hours not recorded'} of training audio "
             f"(`{', '.join(Path(p).name for p in korasr.get('source_manifests', {}).get('train_ds', []))}`)",
             f"- steps: {training.get('global_step', (record.get('trainer') or {}).get('max_steps', '?'))}"
             + (f" in {training['seconds'] / 60:.1f} min" if training.get("seconds") else ""),
             f"- hardware: {hw}",
             *([f"- started from `{Path(init['path']).name}` ({init['kind']}): its front end and encoder"] if init else []),
             "- the full resolved configuration: `training/korasr_run.yaml` (the model's own travels in the `.nemo`)",
             "",
             "## Results", "",
             "| split | utterances | CER % | CER+space % | WER % |", "|---|---:|---:|---:|---:|",
             *[f"| {split} | {s['utterances']} | {s['cer']:.2f} | {s['cer_space']:.2f} | {s['wer']:.2f} |"
               for split, s in report.get("splits", {}).items()],
             "", f"Greedy decoding. Scored under normalization `{json.dumps(report.get('meta', {}).get('normalization', {}))}` "
             f"on {report.get('meta', {}).get('date', '?')}. Definitions:", "",
             *[f"- **{k}**: {v}" for k, v in report.get("meta", {}).get("definitions", {}).items()],
             "", "## Limits", "", LIMITS.get(recipe, "Scored only on the splits above."), "",
             "## Use", "", "```bash", "pip install './korasr[runtime]'  # in a korasr checkout: onnxruntime only",
             "korasr transcribe --model . audio.wav", "korasr serve --model .          # HTTP, OpenAI audio API, WebSocket",
             "make train INIT=/path/to/this/folder   # in a korasr checkout: fine-tune on your data", "```", "", "```python",
             "from nemo.collections.asr.models import EncDecCTCModelBPE",
             f"model = EncDecCTCModelBPE.restore_from({nemo!r})",
             "print(model.transcribe(['audio.wav']))  # jamo models print decomposed jamo: unicodedata.normalize('NFC', …)",
             "```", "", "```python",
             "import sherpa_onnx  # sherpa-onnx reads the export's encoder.onnx",
             "rec = sherpa_onnx.OfflineRecognizer.from_nemo_ctc(model='export/encoder.onnx', tokens='export/tokens.txt')",
             "```", ""]  # fmt: skip
    return "\n".join(lines)
