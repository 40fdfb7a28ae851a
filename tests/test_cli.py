"""The `korasr` command as a user runs it."""

from __future__ import annotations

import subprocess

from tests.conftest import korasr_cmd


def test_normalize_writes_one_line_per_input_line():
    raw = "o/ (3시)/(세 시)에 보자.\nb/ n/\n()/) 그래\r\n어/ 저+ 저는 club/ 가요?\n"
    proc = subprocess.run(korasr_cmd("normalize"), input=raw, capture_output=True, text=True, check=True)
    assert proc.stdout == "3시에 보자\n\n\n어 저 저는 club 가요\n"
    assert "line 3: dual pair without its pronunciation side" in proc.stderr
    proc = subprocess.run(
        korasr_cmd("normalize", "--form", "phonetic", "--disfluency", "fl", "--unk", "[unk]"),
        input="(3시)/(세 시)에 u/ 어/ 보자\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout == "세 시에 [unk] 보자\n"


def test_prepare_errors_name_the_path_and_the_expected_tree(tmp_path):
    proc = subprocess.run(
        korasr_cmd("prepare", "kspon", "--root", str(tmp_path), "--out", str(tmp_path / "m")),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert f"{tmp_path}: no KsponSpeech_scripts/ or scripts/ folder" in proc.stderr
    assert "KsponSpeech_eval/eval_clean" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_imports_neither_torch_nor_nemo():
    code = "import sys, korasr.cli, korasr.data.kspon, korasr.data.sample_corpus; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'nemo', 'lightning')))"
    out = subprocess.run(
        [korasr_cmd()[0].replace("korasr", "python"), "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_numeric_arguments_are_bounded_with_clear_errors(tmp_path):
    """`--chunk-seconds 0` used to loop forever and a negative value read the whole file."""
    cases = [
        (["transcribe", "--model", str(tmp_path), "--chunk-seconds", "0", "a.wav"], "--chunk-seconds: 0 is out of range (4 to 3600)"),
        (["transcribe", "--model", str(tmp_path), "--chunk-seconds", "-5", "a.wav"], "out of range"),
        (["transcribe", "--model", str(tmp_path), "--chunk-seconds", "nan", "a.wav"], "'nan' is not a finite number"),
        (["transcribe", "--model", str(tmp_path), "--batch-size", "0", "a.wav"], "--batch-size: 0 is out of range"),
        (["serve", "--model", str(tmp_path), "--queue-size", "0"], "--queue-size: 0 is out of range (1 to 4096)"),
        (["serve", "--model", str(tmp_path), "--max-audio-seconds", "inf"], "not a finite number"),
        (["serve", "--model", str(tmp_path), "--port", "70000"], "--port: 70000 is out of range"),
        (["serve", "--model", str(tmp_path), "--max-upload-mb", "x"], "'x' is not a number"),
        (["prepare", "kspon", "--root", str(tmp_path), "--jobs", "0"], "--jobs: 0 is out of range"),
    ]  # fmt: skip
    for args, message in cases:
        proc = subprocess.run(korasr_cmd(*args), capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_serve_config_is_bounded_and_reaches_worker_processes_whole(tmp_path, monkeypatch):
    import pytest

    from korasr.serve.config import ENV, ServeConfig

    config = ServeConfig(model=tmp_path, precision="int8", threads=2, queue_size=3, chunk_seconds=20,
                         batch_seconds=40, upload_timeout_s=9, public_docs=True, api_key="secret")  # fmt: skip
    monkeypatch.setenv(ENV, config.to_env())
    assert "secret" not in config.to_env()  # the key travels in KORASR_API_KEY, not in the config
    monkeypatch.setenv("KORASR_API_KEY", "secret")
    assert ServeConfig.from_env() == config  # --workers N: every option, precision and threads included
    with pytest.raises(ValueError, match="batch_seconds 10: from chunk_seconds"):
        ServeConfig(model=tmp_path, chunk_seconds=20, batch_seconds=10)
    with pytest.raises(ValueError, match="precision 'int4'"):
        ServeConfig(model=tmp_path, precision="int4")
