"""An ``--out`` folder is replaced only when its command wrote it (korasr.fsutil.staged_dir).

For each command (tokenizer build, lm build, export, Triton repository): a folder holding a foreign file is refused
with a message naming the folder and the file, and the file survives; ``force`` replaces it; a rerun over the
command's own output replaces it; a run that fails inside the staging block leaves the old folder as it was and no
staging folder behind. Export runs its real staging and refusal with the model work (NeMo, ONNX) replaced by a stub.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from korasr.cli import main
from korasr.data.sample_text import sentence
from korasr.export import offline
from korasr.fsutil import MARKER, ArtifactKind, OutFolderError, check_replaceable, staged_dir
from korasr.lm.build import LM_FOLDER, build_lm
from korasr.text.normalize import normalize
from korasr.tokenizer.build import TOKENIZER_FOLDER, TokenizerOptions, build_tokenizer
from korasr.triton import ENSEMBLE, TRITON_FOLDER, write_repository

FOREIGN = "trained-model.nemo"  # what `--out exp/sample` would have held


def foreign_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / FOREIGN).write_bytes(b"weeks of training")
    return path


def marker(folder: Path) -> dict:
    return json.loads((folder / MARKER).read_text(encoding="utf-8"))


def assert_refused(error: pytest.ExceptionInfo, folder: Path) -> None:
    message = str(error.value)
    assert str(folder) in message and FOREIGN in message and "--force" in message, message
    assert (folder / FOREIGN).read_bytes() == b"weeks of training"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]  # no staging left


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("out_folders")
    r = random.Random(0)
    texts = [t for t in (normalize(sentence(r, "templates"), "phonetic", "df").text for _ in range(200)) if t]
    path = tmp / "train.jsonl"
    path.write_text("".join(json.dumps({"audio_filepath": "-", "duration": 1.0, "text": t}, ensure_ascii=False) + "\n"
                            for t in texts), encoding="utf-8")  # fmt: skip
    return path


def tokenize(manifest: Path, out: Path, coverage: float = 1.0, **kwargs) -> Path:  # type: ignore[no-untyped-def]
    options = TokenizerOptions(unit="char-syllable", character_coverage=coverage)
    return build_tokenizer(manifest, out, options, report_manifests=[], **kwargs)


@pytest.fixture(scope="module")
def tokenizer(manifest) -> Path:
    return tokenize(manifest, manifest.parent / "tok")


# --- the shared mechanism ----------------------------------------------------------------------------------------

KIND = ArtifactKind("thing", ("thing.json", '"format": "thing/1"'), ("thing.json", "*.bin"))


def write_thing(out: Path, **kwargs) -> Path:  # type: ignore[no-untyped-def]
    with staged_dir(out, KIND, **kwargs) as staging:
        (staging / "thing.json").write_text('{"format": "thing/1"}')
        (staging / "a.bin").write_bytes(b"new")
    return out


def test_a_missing_or_empty_folder_is_written_and_marked(tmp_path):
    write_thing(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    write_thing(tmp_path / "empty")
    for name in ("new", "empty"):
        assert marker(tmp_path / name)["kind"] == "thing"
        assert marker(tmp_path / name)["entries"] == ["a.bin", "thing.json"]
        assert (tmp_path / name / "a.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]


def test_a_folder_written_before_markers_is_recognized_by_its_metadata_and_its_names(tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "thing.json").write_text('{"format": "thing/1"}')
    (legacy / "old.bin").write_bytes(b"old")
    write_thing(legacy)
    assert sorted(p.name for p in legacy.iterdir()) == [MARKER, "a.bin", "thing.json"]

    unknown = tmp_path / "unknown"  # the names without the signature: someone else's folder
    unknown.mkdir()
    (unknown / "thing.json").write_text('{"format": "other"}')
    with pytest.raises(OutFolderError, match=r"no \.korasr-artifact and no thing\.json.*thing\.json"):
        write_thing(unknown)
    assert (unknown / "thing.json").read_text() == '{"format": "other"}'

    (legacy / MARKER).unlink()
    (legacy / "notes.txt").write_text("mine")  # the signature, and something the kind never writes
    with pytest.raises(OutFolderError, match=r"notes\.txt"):
        write_thing(legacy)
    assert (legacy / "notes.txt").read_text() == "mine"


def test_a_marked_folder_with_an_added_file_or_of_another_kind_is_refused(tmp_path):
    out = write_thing(tmp_path / "out")
    (out / "a.bin.bak").write_bytes(b"a user's copy")  # matches no listed entry: the marker lists what was written
    with pytest.raises(OutFolderError, match=r"did not write: a\.bin\.bak"):
        write_thing(out)
    (out / "a.bin.bak").unlink()
    other = ArtifactKind("other", ("x", "y"), ("*",))
    with pytest.raises(OutFolderError, match="holds a korasr 'thing' folder"):
        check_replaceable(out, other)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutFolderError, match="is a file, not a folder"):
        write_thing(tmp_path / "file")


def test_many_foreign_entries_are_counted_not_all_listed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for i in range(12):
        (out / f"f{i:02d}").write_text("x")
    with pytest.raises(OutFolderError, match=r"f00, f01, f02, f03, f04 and 7 more"):
        write_thing(out)


def test_a_failure_during_the_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = write_thing(tmp_path / "out")
    (out / "a.bin").write_bytes(b"old")
    real = os.rename

    def failing(src, dst):  # type: ignore[no-untyped-def]
        if Path(dst) == out and ".old." not in Path(src).name:  # the new folder into place, the old one aside
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OSError, match="disk gone"):
        write_thing(out)
    monkeypatch.undo()
    assert (out / "a.bin").read_bytes() == b"old" and leftovers(out) == []


# --- tokenizer build ---------------------------------------------------------------------------------------------


def test_tokenizer_build_refuses_a_foreign_folder_and_force_replaces_it(manifest, tmp_path):
    out = foreign_folder(tmp_path / "tok")
    with pytest.raises(OutFolderError) as error:
        tokenize(manifest, out)
    assert_refused(error, out)
    tokenize(manifest, out, force=True)
    assert not (out / FOREIGN).exists() and marker(out)["kind"] == TOKENIZER_FOLDER.name
    assert (out / "tokenizer.model").is_file() and leftovers(out) == []


def test_tokenizer_rebuild_replaces_its_own_output_marked_or_not(manifest, tokenizer, tmp_path):
    out = tokenize(manifest, tmp_path / "tok")
    tokenize(manifest, out, coverage=0.9999)  # other options: rebuilt over its own marked output
    assert marker(out)["kind"] == "tokenizer"
    (out / MARKER).unlink()  # as written before markers existed
    tokenize(manifest, out, coverage=0.9998)
    assert (out / MARKER).is_file() and leftovers(out) == []


def test_an_interrupted_tokenizer_build_leaves_the_old_one(manifest, tmp_path, monkeypatch):
    out = tokenize(manifest, tmp_path / "tok")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(directory):  # type: ignore[no-untyped-def]
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr("korasr.tokenizer.build._write_nemo_vocab", crash)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        tokenize(manifest, out, coverage=0.9999)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and leftovers(out) == []


# --- lm build ----------------------------------------------------------------------------------------------------


def test_lm_build_refuses_a_foreign_folder_and_force_replaces_it(tokenizer, tmp_path):
    out = foreign_folder(tmp_path / "exp" / "sample")
    with pytest.raises(OutFolderError) as error:
        build_lm(tokenizer, out, order=3)
    assert_refused(error, out)
    build_lm(tokenizer, out, order=3, force=True)
    assert not (out / FOREIGN).exists() and marker(out)["kind"] == LM_FOLDER.name
    assert marker(out)["entries"] == ["lm.arpa", "lm.bin", "lm.json"] and leftovers(out) == []


def test_lm_rebuild_replaces_its_own_output_marked_or_not(tokenizer, tmp_path):
    out = build_lm(tokenizer, tmp_path / "lm", order=3)
    build_lm(tokenizer, out, order=4)
    (out / MARKER).unlink()
    build_lm(tokenizer, out, order=3)
    assert json.loads((out / "lm.json").read_text())["order"] == 3 and (out / MARKER).is_file()


def test_an_interrupted_lm_build_leaves_the_old_one(tokenizer, tmp_path, monkeypatch):
    out = build_lm(tokenizer, tmp_path / "lm", order=3)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def crash(path):  # type: ignore[no-untyped-def]
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr("korasr.lm.build.arpa_counts", crash)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        build_lm(tokenizer, out, order=4)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and leftovers(out) == []


def test_the_cli_says_which_folder_in_one_line_and_exits_non_zero(tokenizer, tmp_path, capsys):
    out = foreign_folder(tmp_path / "exp")
    assert main(["lm", "build", "--tokenizer", str(tokenizer), "--out", str(out), "--order", "3"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"korasr lm: error: {out}: not replaced") and FOREIGN in line and "--force" in line
    assert (out / FOREIGN).is_file()
    assert main(["lm", "build", "--tokenizer", str(tokenizer), "--out", str(out), "--order", "3", "--force"]) == 0
    assert not (out / FOREIGN).exists()


# --- Triton repository -------------------------------------------------------------------------------------------


@pytest.fixture
def export_dir(tmp_path) -> Path:
    """What write_repository reads from an export: model.json, model.onnx (copied, not parsed), tokens.txt."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.json").write_text(json.dumps({"vocab_size": 3, "unit": "jamo", "blank_id": 2}))
    (export / "model.onnx").write_bytes(b"graph")
    (export / "tokens.txt").write_text("a 0\nb 1\n<blk> 2\n")
    return export


def test_triton_refuses_a_foreign_folder_and_force_replaces_it(export_dir, tmp_path):
    out = foreign_folder(tmp_path / "repo")
    with pytest.raises(OutFolderError) as error:
        write_repository(export_dir, out)
    assert_refused(error, out)
    write_repository(export_dir, out, force=True)
    assert not (out / FOREIGN).exists() and marker(out)["kind"] == TRITON_FOLDER.name
    assert (out / ENSEMBLE / "config.pbtxt").is_file() and leftovers(out) == []


def test_triton_rewrite_replaces_its_own_output_marked_or_not(export_dir):
    out = write_repository(export_dir)
    write_repository(export_dir, device="gpu")
    (out / MARKER).unlink()
    write_repository(export_dir)
    assert "KIND_CPU" in (out / "korasr_ctc" / "config.pbtxt").read_text() and (out / MARKER).is_file()


def test_an_interrupted_triton_write_leaves_the_old_one(export_dir):
    out = write_repository(export_dir)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (export_dir / "tokens.txt").unlink()  # the last copy inside the staging block fails
    with pytest.raises(FileNotFoundError):
        write_repository(export_dir, device="gpu")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert leftovers(out) == []


# --- export --------------------------------------------------------------------------------------------------------


@pytest.fixture
def stub_export(monkeypatch):
    """export() with its staging and refusal as they are, the model work replaced: writes what an export holds."""
    calls = []

    def write(tmp, model_path, lm_info, **options):  # type: ignore[no-untyped-def]
        calls.append(model_path)
        if options["lookahead_ms"] == -1:  # the trigger of a crash mid-export
            (tmp / "model.onnx").write_bytes(b"half")
            raise RuntimeError("killed mid-export")
        (tmp / "model.onnx").write_bytes(b"graph")
        (tmp / "model.json").write_text(json.dumps({"format": "korasr-export/1"}, indent=2))
        return {"max_abs_logprob_diff": 0.0}

    monkeypatch.setattr(offline, "_write_export", write)
    return calls


def test_export_refuses_a_foreign_folder_before_loading_the_model(stub_export, tmp_path):
    out = foreign_folder(tmp_path / "exp")
    with pytest.raises(OutFolderError) as error:
        offline.export(tmp_path / "model.nemo", out)
    assert_refused(error, out)
    assert not stub_export
    offline.export(tmp_path / "model.nemo", out, force=True)
    assert not (out / FOREIGN).exists() and marker(out)["kind"] == offline.EXPORT_FOLDER.name


def test_export_rerun_replaces_its_own_output_marked_or_not(stub_export, tmp_path):
    out = offline.export(tmp_path / "model.nemo")
    assert out == tmp_path / "export"
    offline.export(tmp_path / "model.nemo")
    (out / MARKER).unlink()
    for name in ("README.md", "model.fp16.onnx", "tokens.txt"):  # more of what earlier exports held
        (out / name).write_text("x")
    (out / "triton").mkdir()
    offline.export(tmp_path / "model.nemo")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "model.json", "model.onnx"] and len(stub_export) == 3


def test_an_interrupted_export_leaves_the_old_one(stub_export, tmp_path):
    out = offline.export(tmp_path / "model.nemo")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError, match="killed mid-export"):
        offline.export(tmp_path / "model.nemo", lookahead_ms=-1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and leftovers(out) == []


def test_export_cli_refuses_a_foreign_folder(tmp_path, capsys):
    out = foreign_folder(tmp_path / "exp")  # refused before the model is read: no model needed
    assert main(["export", "--model", str(tmp_path / "model.nemo"), "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"korasr export: error: {out}: not replaced") and FOREIGN in line
    assert (out / FOREIGN).is_file()
