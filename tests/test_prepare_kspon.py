"""`prepare_kspon` on corpora the tests write: every line accounted for, audio exact, idempotent, interruptible."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from korasr.data.kspon import CorpusError, PrepareOptions, prepare_kspon
from tests.conftest import QuirkyCorpus, eval_rel, korasr_cmd, pcm_bytes, tree_state

SPLITS = ("train", "dev", "eval_clean", "eval_other")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run(corpus: QuirkyCorpus, tmp_path: Path, jobs: int = 2, **opts) -> tuple[Path, dict]:
    out = tmp_path / "manifests"
    result = prepare_kspon(
        corpus.root, out, audio_dir=tmp_path / "audio", options=PrepareOptions(**opts), jobs=jobs, progress=False
    )
    return out, {"result": result, "summary": json.loads(result.summary.read_text())}


@pytest.mark.parametrize("jobs", [1, 2])
def test_every_line_ends_in_a_manifest_or_a_reject(quirky_corpus, tmp_path, jobs):
    out, info = run(quirky_corpus, tmp_path, jobs=jobs)
    rejects = read_jsonl(out / "rejects.jsonl")
    for split in SPLITS:
        rows = read_jsonl(out / f"{split}.jsonl")
        split_rejects = [r for r in rejects if r["split"] == split]
        expected = quirky_corpus.expected[split]
        assert len(rows) + len(split_rejects) == len(expected)
        assert [text for kind, text in expected if kind == "row"] == [r["text"] for r in rows]
        assert sorted(reason for kind, reason in expected if kind == "reject") == sorted(
            r["reason"] for r in split_rejects
        )
        counts = info["summary"]["counts"][split]
        assert counts == {
            "lines": len(expected),
            "utterances": len(rows),
            "rejected": len(split_rejects),
            "rejects_by_reason": {
                r: sum(x["reason"] == r for x in split_rejects) for r in {x["reason"] for x in split_rejects}
            },
            "hours": pytest.approx(sum(r["duration"] for r in rows) / 3600, abs=1e-4),
        }
    # the duplicate of an eval utterance was rejected from train, not from eval
    dup = [r for r in rejects if r["reason"] == "duplicate utterance id"]
    assert {(r["split"], r["utt_id"]) for r in dup} == {
        ("train", "KsponSpeech_000011"),
        ("train", "KsponSpeech_E00003"),
    }
    assert any("eval_other.trn" in r["detail"] for r in dup)


def test_manifest_rows_and_audio_are_exact(quirky_corpus, tmp_path):
    out, info = run(quirky_corpus, tmp_path)
    rows = {r["utt_id"]: r for s in SPLITS for r in read_jsonl(out / f"{s}.jsonl")}
    assert len(rows) == sum(1 for s in SPLITS for kind, _ in quirky_corpus.expected[s] if kind == "row")
    for rel, pcm in quirky_corpus.audio.items():
        utt_id = Path(rel).stem
        if utt_id not in rows or len(pcm) < 2:
            continue
        row = rows[utt_id]
        assert Path(row["audio_filepath"]).is_absolute()
        assert Path(row["audio_filepath"]).is_relative_to(tmp_path / "audio")
        samples, rate = sf.read(row["audio_filepath"], dtype="int16")
        assert rate == 16000
        expected = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2")
        np.testing.assert_array_equal(samples, expected)  # bit-exact, odd trailing byte dropped
        assert row["duration"] == len(expected) / 16000
        assert set(row) == {"audio_filepath", "duration", "text", "utt_id", "raw_text"}
    assert rows["KsponSpeech_000001"]["raw_text"] == "o/ b/ (3시)/(세 시)에 보자."
    assert info["summary"]["odd_byte_files"] == {"count": 1, "first_utt_ids": ["KsponSpeech_000005"]}
    assert info["summary"]["scripts"]["train"]["encodings"] == {"utf-8": 14, "cp949": 1, "undecodable": 1}


def test_corpus_is_never_written(quirky_corpus, tmp_path):
    before = tree_state(quirky_corpus.root)
    run(quirky_corpus, tmp_path)
    assert tree_state(quirky_corpus.root) == before
    with pytest.raises(CorpusError, match="read-only"):
        prepare_kspon(quirky_corpus.root, tmp_path / "m", audio_dir=quirky_corpus.root / "audio", progress=False)


def test_forms_and_disfluency_modes_reach_the_manifest(quirky_corpus, tmp_path):
    out, _ = run(quirky_corpus, tmp_path, form="phonetic", disfluency="fl", unk="[unk]")
    texts = {r["utt_id"]: r["text"] for r in read_jsonl(out / "train.jsonl")}
    assert texts["KsponSpeech_000001"] == "세 시에 보자"
    assert texts["KsponSpeech_000002"] == "그러니까 저는 [unk] 학생이에요"


def test_duration_filters_apply_to_train_only(quirky_corpus, tmp_path):
    out, _info = run(quirky_corpus, tmp_path, max_duration=10.0, min_duration=1.2)
    rejects = read_jsonl(out / "rejects.jsonl")
    too_long = [r for r in rejects if r["reason"] == "too long"]
    assert [r["utt_id"] for r in too_long] == ["KsponSpeech_000012"]
    assert "12.000 s > 10.0 s" in too_long[0]["detail"]
    # the 1-second train utterances (the last one is the train line that repeats an eval file)
    too_short = {(r["split"], r["utt_id"]) for r in rejects if r["reason"] == "too short"}
    assert too_short == {
        ("train", "KsponSpeech_000001"),
        ("train", "KsponSpeech_000004"),
        ("train", "KsponSpeech_E00003"),
    }
    assert "KsponSpeech_E00003" in {r["utt_id"] for r in read_jsonl(out / "eval_other.jsonl")}  # 1 s, kept
    assert "KsponSpeech_E00004" in {r["utt_id"] for r in read_jsonl(out / "eval_other.jsonl")}  # 12 s, kept


def test_scripts_folder_may_be_named_scripts(tmp_path):
    c = QuirkyCorpus(tmp_path / "K", scripts_dir="scripts")
    for split in SPLITS:
        c.add(split, f"x/{split}.pcm", f"{split} 문장", ("row", f"{split} 문장"))
    c.write_scripts()
    out, _info = run(c, tmp_path)
    assert [r["text"] for r in read_jsonl(out / "dev.jsonl")] == ["dev 문장"]


def test_extra_eval_scripts_become_eval_splits_that_outrank_training(quirky_corpus, tmp_path):
    """Any further eval_NAME.trn (the sample corpus's eval_novel, a team's domain set) is prepared into its own
    manifest like eval_clean: no duration filter, and an id it shares with train stays with it. Other names and
    names that are not eval_* are not read."""
    c = quirky_corpus
    c.add("eval_domain", eval_rel("eval_domain", 20), "도메인 평가 문장", ("row", "도메인 평가 문장"),
          audio=pcm_bytes(12.0, seed=8))  # fmt: skip
    c.add("eval_domain", eval_rel("eval_domain", 21), "짧은 평가 문장", ("row", "짧은 평가 문장"))
    c.add_raw_line(
        "train", f"{eval_rel('eval_domain', 21)} :: 학습에 다시\n".encode(), ("reject", "duplicate utterance id")
    )
    c.write_scripts()
    (c.scripts_dir / "notes.trn").write_text("x.pcm :: 읽지 않는 줄\n", encoding="utf-8")
    (c.scripts_dir / "eval_Bad Name.trn").write_text("x.pcm :: 읽지 않는 줄\n", encoding="utf-8")
    out, info = run(c, tmp_path, max_duration=10.0)
    assert [r["text"] for r in read_jsonl(out / "eval_domain.jsonl")] == [
        "도메인 평가 문장",
        "짧은 평가 문장",
    ]  # 12 s kept
    assert sorted(info["summary"]["counts"]) == sorted([*SPLITS, "eval_domain"])
    dup = [r for r in read_jsonl(out / "rejects.jsonl") if r["reason"] == "duplicate utterance id"]
    assert any(r["split"] == "train" and "first in eval_domain.trn line 2" in r["detail"] for r in dup), dup
    assert sorted(p.name for p in out.glob("*.jsonl")) == sorted(
        [f"{s}.jsonl" for s in (*SPLITS, "eval_domain")] + ["rejects.jsonl"]
    )


def test_not_a_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="no KsponSpeech_scripts/ or scripts/ folder"):
        prepare_kspon(tmp_path, tmp_path / "m", audio_dir=tmp_path / "a", progress=False)
    with pytest.raises(CorpusError, match="no such directory"):
        prepare_kspon(tmp_path / "nowhere", tmp_path / "m", audio_dir=tmp_path / "a", progress=False)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "train.trn").write_text("")
    with pytest.raises(CorpusError, match=r"missing script\(s\):.*dev\.trn"):
        prepare_kspon(tmp_path, tmp_path / "m", audio_dir=tmp_path / "a", progress=False)


def test_wrong_tree_stops_instead_of_rejecting_everything(tmp_path):
    c = QuirkyCorpus(tmp_path / "K")
    for split in SPLITS:
        c.add(split, f"x/{split}.pcm", "문장", ("reject", "missing audio"), audio=None)
    c.write_scripts()
    with pytest.raises(CorpusError, match="none of its 1 audio files exists"):
        run(c, tmp_path)
    assert not (tmp_path / "manifests" / "train.jsonl").exists()
    assert not list((tmp_path / "manifests").glob("*.tmp"))


def test_rerun_skips_and_changed_options_redo(quirky_corpus, tmp_path):
    out, _first = run(quirky_corpus, tmp_path)
    manifests = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = prepare_kspon(quirky_corpus.root, out, audio_dir=tmp_path / "audio", progress=False)
    assert again.skipped
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    # other options redo the work; the same options again give byte-identical manifests
    phonetic = prepare_kspon(
        quirky_corpus.root, out, audio_dir=tmp_path / "audio", options=PrepareOptions(form="phonetic"), progress=False
    )
    assert not phonetic.skipped
    assert (out / "eval_clean.jsonl").read_bytes() != manifests["eval_clean.jsonl"]
    (out / "prepare.json").unlink()  # forget the record: the work is redone, with identical output
    run(quirky_corpus, tmp_path)
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == manifests
    # a changed script is noticed
    with open(quirky_corpus.scripts_dir / "dev.trn", "ab") as f:
        f.write(b"\n")
    assert not prepare_kspon(quirky_corpus.root, out, audio_dir=tmp_path / "audio", progress=False).skipped


@pytest.mark.slow
def test_killed_midway_then_rerun_gives_the_same_manifests(tmp_path):
    """kill -9 during conversion: no partial file under a final name; the rerun equals an uninterrupted run."""
    corpus = tmp_path / "K"
    subprocess.run(
        korasr_cmd("sample-corpus", str(corpus), "--synth", "tone", "--utterances", "3000", "--quiet"), check=True
    )
    reference = tmp_path / "ref"
    subprocess.run(
        korasr_cmd(
            "prepare",
            "kspon",
            "--root",
            str(corpus),
            "--out",
            str(reference / "m"),
            "--audio-dir",
            str(reference / "a"),
            "--jobs",
            "2",
            "--quiet",
        ),
        check=True,
    )

    out, audio = tmp_path / "m", tmp_path / "a"
    cmd = korasr_cmd(
        "prepare",
        "kspon",
        "--root",
        str(corpus),
        "--out",
        str(out),
        "--audio-dir",
        str(audio),
        "--jobs",
        "1",
        "--quiet",
        "--audio-format",
        "flac",
    )
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(audio.rglob("*.flac"))) < 300:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    converted = list(audio.rglob("*.flac"))
    assert 300 <= len(converted) < 3150, "the kill must land midway"
    assert not (out / "prepare.json").exists()
    for name in ("train.jsonl", "dev.jsonl", "eval_clean.jsonl", "eval_other.jsonl", "rejects.jsonl"):
        assert not (out / name).exists()
    for path in converted:  # every file under its final name is complete
        assert sf.info(path).frames > 0

    subprocess.run(cmd, check=True)
    assert not list(audio.rglob(".*.tmp"))  # the killed run's temporaries were swept by the rerun
    shutil.rmtree(audio)  # the manifests must not depend on which run converted a file
    for name in ("train.jsonl", "dev.jsonl", "eval_clean.jsonl", "eval_other.jsonl", "rejects.jsonl"):
        ours = (out / name).read_text().replace(str(audio), "AUDIO").replace(".flac", ".x")
        ref = (reference / "m" / name).read_text().replace(str(reference / "a"), "AUDIO").replace(".wav", ".x")
        assert ours == ref, name
    assert not list(out.glob(".*tmp"))
