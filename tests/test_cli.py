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
