"""`prepare_kspon` against a hostile or broken corpus: paths that escape, NUL bytes, special files, PCM too big
for WAV, paths that convert onto one file, temporaries of killed runs, a second run on folders in use, a worker
killed mid-run. Every line still ends in a manifest or a reject, and nothing is written outside the output
folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from korasr.data.kspon import (
    CorpusError,
    PrepareOptions,
    _lexical,
    _split_suffix,
    prepare_kspon,
)
from korasr.fsutil import FolderInUseError
from tests.conftest import QuirkyCorpus, korasr_cmd, pcm_bytes, train_rel

SPLITS = ("train", "dev", "eval_clean", "eval_other")


def files(root: Path) -> dict[str, tuple[int, int]]:
    """Every regular file under ``root`` (symlinks not followed) with its size and modification time."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()}  # fmt: skip


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def minimal(root: Path) -> QuirkyCorpus:
    """One good utterance per split, so that only the lines a test adds can be rejected."""
    c = QuirkyCorpus(root)
    for n, split in enumerate(SPLITS):
        c.add(split, f"KsponSpeech_0{n + 1}/KsponSpeech_0001/ok_{split}.pcm", "좋은 문장", ("row", "좋은 문장"))
    return c


def prepare(c: QuirkyCorpus, tmp: Path, jobs: int = 1) -> dict[str, dict]:
    out = tmp / "manifests"
    prepare_kspon(c.root, out, audio_dir=tmp / "audio", options=PrepareOptions(), jobs=jobs, progress=False)
    return {r["line"]: r for r in read_jsonl(out / "rejects.jsonl") if r["split"] == "train"}


def test_paths_that_leave_the_corpus_are_rejected_and_nothing_is_written_outside(tmp_path):
    outside = tmp_path / "secret.pcm"
    outside.write_bytes(pcm_bytes(1.0, seed=1))
    c = minimal(tmp_path / "KsponSpeech")
    (c.root / "KsponSpeech_01").mkdir(exist_ok=True)
    (c.root / "KsponSpeech_01" / "link_out.pcm").symlink_to(outside)
    (c.root / "KsponSpeech_01" / "dir_out").symlink_to(tmp_path)
    os.mkfifo(c.root / "KsponSpeech_01" / "fifo.pcm")  # reading it would block the run forever
    (c.root / "KsponSpeech_01" / "folder.pcm").mkdir()
    hostile = {
        str(outside): "absolute path",
        "../secret.pcm": "leaves the corpus root",
        "KsponSpeech_01/../../secret.pcm": "leaves the corpus root",
        "KsponSpeech_01/link_out.pcm": "resolves outside the corpus root",
        "KsponSpeech_01/dir_out/secret.pcm": "resolves outside the corpus root",
        "KsponSpeech_01/a\0b.pcm": "NUL byte",
        "KsponSpeech_01/fifo.pcm": "not a regular file",
        "KsponSpeech_01/folder.pcm": "not a regular file",
        "KsponSpeech_01/" + "x" * 300 + ".pcm": "name too long",
    }
    for path in hostile:
        c.add_raw_line("train", f"{path} :: 나쁜 경로\n".encode(), ("reject", "?"))
    c.write_scripts()
    before = files(tmp_path)
    started = time.monotonic()
    rejects = prepare(c, tmp_path)
    assert time.monotonic() - started < 60  # the FIFO was not opened
    reasons = {line: (r["reason"], r.get("detail", "")) for line, r in rejects.items()}
    for line, (path, why) in enumerate(hostile.items(), start=2):
        reason, detail = reasons[line]
        assert reason in {"unsafe audio path", "unreadable audio"}, (path, reason)
        assert why in detail or why.lower() in detail.lower(), (path, detail)
    after = files(tmp_path)
    new = {p for p in after if p not in before}
    assert new and all(p.startswith(("manifests/", "audio/")) for p in new), new
    assert {p: after.get(p) for p in before} == before  # nothing existing was changed
    assert not list((tmp_path / "audio").rglob("secret*"))


def test_pcm_over_what_a_wav_header_can_describe_is_a_reject(tmp_path):
    c = minimal(tmp_path / "K")
    c.add("train", train_rel(7), "아주 긴 파일", ("reject", "audio too large"), audio=None)
    huge = c.root / train_rel(7)
    huge.parent.mkdir(parents=True, exist_ok=True)
    with open(huge, "wb") as f:  # sparse: 4 GiB + 2 bytes without writing them
        f.truncate(2**32 + 2)
    c.write_scripts()
    reject = next(iter(prepare(c, tmp_path).values()))
    assert reject["reason"] == "audio too large" and "4294967259 bytes" in reject["detail"]
    assert not list((tmp_path / "audio").rglob("*000007*"))


def test_temporaries_of_a_killed_run_are_swept(tmp_path):
    c = minimal(tmp_path / "K")
    c.write_scripts()
    stale = tmp_path / "audio" / "KsponSpeech_01" / "KsponSpeech_0001" / ".ok_train.wav.4242.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")
    keep = stale.with_name("ok.tmp")  # not one of ours
    keep.write_bytes(b"x")
    prepare(c, tmp_path)
    assert not stale.exists() and keep.exists()


@pytest.mark.parametrize("jobs", [1, 2])
def test_paths_that_differ_only_in_extension_never_share_converted_audio(tmp_path, jobs):
    """x.pcm and x.wav both convert to x.wav: the first line in the order eval_clean, eval_other, dev, train (then
    line order) keeps it and every other is rejected before a worker writes, so no eval row plays train audio."""
    c = minimal(tmp_path / "K")
    eval_audio, train_audio = pcm_bytes(1.0, seed=5), pcm_bytes(2.0, seed=6)  # sizes differ: a rewrite shows
    c.add("train", "shared/KsponSpeech_000001.pcm", "학습 문장", ("reject", "audio path collision"), audio=train_audio)
    c.add("eval_clean", "shared/KsponSpeech_000001.wav", "평가 문장", ("row", "평가 문장"), audio=eval_audio)
    first, second = pcm_bytes(1.0, seed=7), pcm_bytes(3.0, seed=8)
    c.add("train", "shared/KsponSpeech_000002.pcm", "먼저 온 줄", ("row", "먼저 온 줄"), audio=first)
    c.add("train", "shared/./KsponSpeech_000002.raw", "나중 줄", ("reject", "audio path collision"), audio=second)
    # the very same file listed again converts to the same bytes: a duplicate id, not a collision
    c.add_raw_line(
        "train", "shared/KsponSpeech_000002.pcm :: 또 나온 줄\n".encode(), ("reject", "duplicate utterance id")
    )
    c.write_scripts()
    rejects = prepare(c, tmp_path, jobs=jobs)
    assert {line: r["reason"] for line, r in rejects.items()} == {
        2: "audio path collision",
        4: "audio path collision",
        5: "duplicate utterance id",
    }
    wav = tmp_path / "audio" / "shared" / "KsponSpeech_000001.wav"
    assert str(wav) in rejects[2]["detail"] and "eval_clean.trn line 2" in rejects[2]["detail"]
    assert "eval_clean, eval_other, dev, train" in rejects[2]["detail"]
    assert rejects[2]["path"] == "shared/KsponSpeech_000001.pcm"
    assert "train.trn line 3" in rejects[4]["detail"]
    rows = {r["utt_id"]: r for s in SPLITS for r in read_jsonl(tmp_path / "manifests" / f"{s}.jsonl")}
    assert rows["KsponSpeech_000001"]["audio_filepath"] == str(wav)
    assert wav.read_bytes()[44:] == eval_audio  # the eval row's audio is the eval file, not the train one
    assert Path(rows["KsponSpeech_000002"]["audio_filepath"]).read_bytes()[44:] == first


@given(st.lists(st.text(st.sampled_from("a.b/"), max_size=6), min_size=1, max_size=3).map("/".join))
def test_the_audio_name_is_pathlibs_with_suffix(rel):
    """The string rule behind every destination (the pass over all lines cannot afford pathlib) agrees with it."""
    normal, refused = _lexical(rel)
    if not refused:
        assert f"{_split_suffix(normal)[0]}.wav" == str(PurePosixPath(normal).with_suffix(".wav"))


def test_one_folder_for_manifests_and_audio_is_locked_once(tmp_path):
    c = minimal(tmp_path / "K")
    c.write_scripts()
    same = tmp_path / "both"
    prepare_kspon(c.root, same, audio_dir=same, jobs=1, progress=False)
    assert len(read_jsonl(same / "train.jsonl")) == 1


HOLD = """
import sys
from pathlib import Path
from korasr.fsutil import folder_lock
with folder_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize("held", ["manifests", "audio"])
def test_a_second_run_on_a_folder_in_use_is_refused_and_removes_nothing(tmp_path, held):
    """Another live run holds the manifest or the audio folder: prepare stops at once, naming the folder and the
    holder's PID, and leaves the holder's temporaries alone; once the holder is gone, its temporaries are swept."""
    c = minimal(tmp_path / "K")
    c.write_scripts()
    (tmp_path / held).mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / held)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        theirs = [tmp_path / "audio" / "KsponSpeech_01" / "KsponSpeech_0001" / f".ok_train.wav.{holder.pid}.tmp",
                  tmp_path / "manifests" / f".train.jsonl.{holder.pid}.tmp"]  # fmt: skip
        for path in theirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"being written by the other run")
        out = tmp_path / ("manifests" if held == "manifests" else "other_manifests")
        with pytest.raises(FolderInUseError) as refused:
            prepare_kspon(c.root, out, audio_dir=tmp_path / "audio", jobs=1, progress=False)
        assert str(tmp_path / held) in str(refused.value) and f"PID {holder.pid}" in str(refused.value)
        assert all(path.read_bytes() == b"being written by the other run" for path in theirs)
        assert not (out / "train.jsonl").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    prepare(c, tmp_path)  # the holder has exited: what it left is stale and the next run sweeps it
    assert not any(path.exists() for path in theirs)


def test_a_folder_in_use_below_the_audio_folder_is_not_swept(tmp_path):
    """--audio-dir a for one run and a/inner for another: the outer run's sweep leaves the inner run's files."""
    c = minimal(tmp_path / "K")
    c.write_scripts()
    inner = tmp_path / "audio" / "inner"
    inner.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(inner)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        theirs = inner / "KsponSpeech_01" / f".x.wav.{holder.pid}.tmp"
        theirs.parent.mkdir()
        theirs.write_bytes(b"being written by the other run")
        stale = tmp_path / "audio" / f".y.wav.{holder.pid + 1}.tmp"
        stale.write_bytes(b"left by a killed run")
        prepare(c, tmp_path)
        assert theirs.exists() and not stale.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_killed_worker_ends_the_run_with_a_clear_error(tmp_path):
    """A worker killed by the OOM killer used to leave multiprocessing.Pool waiting forever for its chunk."""
    corpus = tmp_path / "K"
    subprocess.run(korasr_cmd("sample-corpus", str(corpus), "--synth", "tone", "--utterances", "3000", "--quiet"),
                   check=True)  # fmt: skip
    proc = subprocess.Popen(
        korasr_cmd("prepare", "kspon", "--root", str(corpus), "--out", str(tmp_path / "m"), "--audio-dir",
                   str(tmp_path / "a"), "--jobs", "2", "--quiet", "--audio-format", "flac"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    killed = None
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        for pid in pids:  # the pool's workers (the resource tracker, if any, is not a worker: kill the last)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"korasr" in cmdline and b"resource_tracker" not in cmdline:
                killed = int(pid)
        time.sleep(0.01)
    assert killed, "no worker process seen"
    os.kill(killed, signal.SIGKILL)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("prepare hung after a worker was killed")
    assert proc.returncode == 2, stderr[-2000:]
    assert "worker process died" in stderr and "rerun" in stderr
    assert not (tmp_path / "m" / "train.jsonl").exists() and not (tmp_path / "m" / "prepare.json").exists()


path_part = st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), min_size=0, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.lists(st.one_of(path_part, st.sampled_from(["..", ".", "", "/", "~", "\0"])),
                                   min_size=1, max_size=5),
                          st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=20)),
                min_size=1, max_size=6))  # fmt: skip
def test_any_script_line_ends_in_a_manifest_or_a_reject_inside_the_output_folders(tmp_path_factory, lines):
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "outside.pcm").write_bytes(pcm_bytes(0.5, seed=3))
    c = minimal(tmp / "K")
    for parts, text in lines:
        c.add_raw_line("train", ("/".join(parts) + " :: " + text).encode("utf-8", "surrogatepass") + b"\n", ("?", ""))
    c.write_scripts()
    before = files(tmp)
    try:
        prepare_kspon(c.root, tmp / "m", audio_dir=tmp / "a", jobs=1, progress=False)
    except CorpusError as e:  # the one allowed stop: nothing of a split could be read
        assert "none of its" in str(e)
        return
    summary = json.loads((tmp / "m" / "prepare.json").read_text())
    train = summary["counts"]["train"]
    assert train["lines"] == 1 + len(lines) and train["utterances"] + train["rejected"] == train["lines"]
    after = files(tmp)
    assert all(p.startswith(("m/", "a/")) for p in set(after) - set(before))
    assert {p: after.get(p) for p in before} == before
