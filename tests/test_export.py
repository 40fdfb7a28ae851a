"""Export and runtime end to end: the sample model → ONNX (parity-gated) → onnxruntime transcripts that score
as NeMo's, any sample rate, long audio in chunks, no torch in the runtime."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import soundfile as sf

from korasr.metrics import cer
from tests.conftest import korasr_cmd, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(trained, recipe):
    proc = run("export", "--model", str(trained), "--out", str(recipe["tmp"] / "export"),
               "--parity-manifest", str(recipe["manifests"] / "dev.jsonl"))  # fmt: skip
    out = proc.stdout.strip().splitlines()[-1]
    assert out == str(recipe["tmp"] / "export")
    return recipe["tmp"] / "export"


def eval_rows(recipe, n: int | None = None) -> list[dict]:
    lines = (recipe["manifests"] / "eval_clean.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def test_export_directory_is_complete_and_parity_checked(exported):
    info = json.loads((exported / "model.json").read_text(encoding="utf-8"))
    assert info["unit"] == "jamo" and info["sample_rate"] == 16000
    parity = info["parity"]
    assert parity["utterances"] == 8 and parity["max_abs_logprob_diff"] <= parity["tolerance"]
    assert parity["model.onnx"]["greedy_identical"] and parity["encoder.onnx"]["greedy_identical"]
    for name in ("model.onnx", "encoder.onnx", "tokens.txt", "tokenizer.model"):
        assert info["sha256"][name], name
    tokens = (exported / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert tokens[-1] == f"<blk> {info['blank_id']}" and len(tokens) == info["vocab_size"]
    assert not {"<s>", "</s>"} & {line.rsplit(" ", 1)[0] for line in tokens}  # nothing a client would print
    encoder = onnx.load(str(exported / "encoder.onnx"))
    meta = {p.key: p.value for p in encoder.metadata_props}
    assert meta["vocab_size"] == str(info["vocab_size"]) and meta["normalize_type"] == "per_feature"
    assert meta["subsampling_factor"] == str(info["subsampling_factor"])
    assert [i.name for i in encoder.graph.input] == ["audio_signal", "length"]
    onnx.checker.check_model(str(exported / "model.onnx"))


def test_runtime_scores_as_nemo_on_the_sample_eval_set(exported, trained, recipe):
    manifest = str(recipe["manifests"] / "eval_clean.jsonl")
    run("evaluate", "--model", str(exported), "--manifest", manifest, "--out", str(recipe["tmp"] / "eval_onnx"),
        "--quiet")  # fmt: skip
    run("evaluate", "--model", str(trained), "--manifest", manifest, "--out", str(recipe["tmp"] / "eval_nemo"),
        "--quiet")  # fmt: skip
    onnx_report = json.loads((recipe["tmp"] / "eval_onnx" / "report.json").read_text())["splits"]["eval_clean"]
    nemo_report = json.loads((recipe["tmp"] / "eval_nemo" / "report.json").read_text())["splits"]["eval_clean"]
    assert abs(onnx_report["cer"] - nemo_report["cer"]) <= 0.1, (onnx_report["cer"], nemo_report["cer"])


def test_any_rate_and_channel_count_and_word_times(exported, recipe, tmp_path):
    from korasr.runtime import Recognizer

    rec = Recognizer(exported)
    row = eval_rows(recipe, 1)[0]
    audio, rate = sf.read(row["audio_filepath"], dtype="float32")
    import soxr

    stereo = np.stack([soxr.resample(audio, rate, 44100)] * 2, axis=1)
    sf.write(tmp_path / "stereo44k.flac", stereo, 44100)
    same, resampled = rec.transcribe([row["audio_filepath"], tmp_path / "stereo44k.flac"], timestamps=True)
    assert same.text and resampled.text == same.text
    assert [w.text for w in same.words] == same.text.split()
    starts = [w.start for w in same.words]
    assert starts == sorted(starts) and all(w.end > w.start for w in same.words)
    assert same.words[-1].end <= row["duration"] + 0.1


def test_long_audio_in_chunks_and_beyond_nemos_position_table(exported, recipe, tmp_path):
    from korasr.runtime import Recognizer

    rec = Recognizer(exported)
    rows = eval_rows(recipe, 12)
    pause = np.zeros(8000, dtype=np.float32)
    waves = [sf.read(r["audio_filepath"], dtype="float32")[0] for r in rows]
    long = np.concatenate([x for w in waves for x in (w, pause)])
    sf.write(tmp_path / "long.wav", long, 16000)
    singles = [r.text for r in rec.transcribe([r["audio_filepath"] for r in rows])]
    chunked = rec.transcribe([tmp_path / "long.wav"], chunk_seconds=10.0, timestamps=True)[0]
    # cut at pauses, the utterances come back in order (context across a cut may change a jamo, not more)
    assert cer([" ".join(singles)], [chunked.text]) < 3.0, (singles, chunked.text)
    assert chunked.words[-1].end > 40.0
    # one pass over more encoder frames than NeMo's 5,000-entry position table (200 s at 4×)
    info = json.loads((exported / "model.json").read_text())
    seconds = 5200 * info["frame_shift_s"]
    repeats = int(seconds / (len(long) / 16000)) + 1
    very_long = np.tile(long, repeats)[: int(seconds * 16000)]
    logprobs = rec.logprobs([very_long])[0]
    assert logprobs.shape[0] > 5000 and np.isfinite(logprobs).all()
    # normalization statistics now span the whole signal, so allow a little more drift than the chunked pass
    first = " ".join(singles)
    assert cer([first], [rec.decode(logprobs).text[: len(first)]]) < 10.0


def test_runtime_imports_neither_torch_nor_nemo(exported, recipe):
    wav = eval_rows(recipe, 1)[0]["audio_filepath"]
    script = (
        "import sys\n"
        "from korasr.runtime import Recognizer\n"
        f"print(Recognizer({str(exported)!r}).transcribe([{wav!r}])[0].text)\n"
        "assert not {'torch', 'nemo'} & set(sys.modules), sorted(m for m in sys.modules if m in ('torch', 'nemo'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    cli = subprocess.run(korasr_cmd("transcribe", "--model", str(exported), "--json", wav), capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert json.loads(cli.stdout)["text"] == proc.stdout.strip()


def test_triton_repository_matches_the_graph(exported, tmp_path):
    import shutil

    from korasr.triton import load_config, validate

    repo = exported / "triton"
    assert validate(repo) == ["korasr_asr", "korasr_ctc", "korasr_decode"]
    ctc = load_config(repo / "korasr_ctc" / "config.pbtxt")
    assert ctc.dynamic_batching.max_queue_delay_microseconds > 0 and ctc.max_batch_size >= 8
    assert [i.name for i in ctc.input] == ["audio", "audio_length"]
    info = json.loads((exported / "model.json").read_text())
    assert info["triton"] == ["korasr_asr", "korasr_ctc", "korasr_decode"]
    assert info["tensorrt"]["built"] is False and "skipped" in info["tensorrt"]["reason"]  # no GPU here
    # a config that disagrees with the graph is refused, naming the file
    broken = tmp_path / "triton"
    shutil.copytree(repo, broken)
    config = broken / "korasr_ctc" / "config.pbtxt"
    vocab = info["vocab_size"]
    config.write_text(config.read_text().replace(f"dims: [ -1, {vocab} ]", f"dims: [ -1, {vocab + 1} ]"))
    with pytest.raises(ValueError, match=r"korasr_ctc/config.pbtxt: output 'logprobs'"):
        validate(broken)


def test_triton_decode_step_returns_the_runtimes_text(exported, recipe, monkeypatch):
    """The python-backend decoding (model.py) on real log-probs; Triton's pb_utils is not installable here, so
    only the decoding method is exercised, with a bare module standing in for the import."""
    import importlib.util
    import types

    from korasr.runtime import Recognizer

    rec = Recognizer(exported)
    rows = eval_rows(recipe, 4)
    waves = [sf.read(r["audio_filepath"], dtype="float32")[0] for r in rows]
    folder = exported / "triton" / "korasr_decode" / "1"
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    monkeypatch.syspath_prepend(str(folder))
    spec = importlib.util.spec_from_file_location("korasr_triton_decode", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    step = module.TritonPythonModel()
    step.initialize({})
    for wave in waves:
        logprobs = rec.logprobs([wave])[0]
        assert step.text(logprobs, len(logprobs)) == rec.decode(logprobs).text


def test_runtime_extra_installs_without_torch_or_nemo(exported, recipe, tmp_path):
    """`pip install korasr[runtime]` into a fresh venv: no torch, no NeMo, and it transcribes."""
    from tests.conftest import ROOT

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{ROOT}[runtime]"], capture_output=True,
                         text=True)  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-2000:]
    frozen = subprocess.run([str(venv / "bin" / "pip"), "freeze"], capture_output=True, text=True, check=True).stdout
    names = {line.split("==")[0].split(" @ ")[0].lower() for line in frozen.splitlines()}
    assert "onnxruntime" in names and not {"torch", "nemo-toolkit", "nemo_toolkit", "lightning"} & names
    wav = eval_rows(recipe, 1)[0]["audio_filepath"]
    proc = subprocess.run([str(venv / "bin" / "korasr"), "transcribe", "--model", str(exported), wav],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()
