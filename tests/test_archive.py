"""Archives on Ray Data (`korasr transcribe --manifest IN --out DIR`): the same transcripts as the single process,
error rows that never stop a run, Parquet, URIs and globs, a killed run that resumes without writing a row twice,
and output folders that are never taken over."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from korasr.archive.sources import SourceError, iter_entries
from tests.conftest import ROOT, eval_rows, korasr_cmd


def archive(model: Path, source: str | Path, out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(korasr_cmd("transcribe", "--model", str(model), "--manifest", str(source), "--out", str(out),
                                     *extra), capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_parts(out: Path) -> list[dict]:
    rows = []
    for part in sorted(out.glob("part-*.jsonl")):
        rows += [json.loads(line) for line in part.read_text(encoding="utf-8").splitlines()]
    for part in sorted(out.glob("part-*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows


# --- what a run reads (no model) --------------------------------------------------------------------------------


def test_sources_stream_manifests_lists_folders_and_globs_in_a_fixed_order(tmp_path):
    audio = tmp_path / "audio"
    (audio / "b").mkdir(parents=True)
    (audio / "a").mkdir()
    for rel in ("b/2.wav", "a/1.flac", "a/0.WAV", "b/notes.txt", "z.mp3"):
        (audio / rel).write_bytes(b"x")
    folder = [e["path"] for e in iter_entries(str(audio))]
    assert folder == [str(audio / p) for p in ("a/0.WAV", "a/1.flac", "b/2.wav", "z.mp3")]  # sorted, audio only
    assert [e["path"] for e in iter_entries(str(audio / "*" / "*.wav"))] == [str(audio / "b/2.wav")]
    assert [e["path"] for e in iter_entries(f"file://{audio}/a/*")] == [f"file://{audio}/a/0.WAV",
                                                                         f"file://{audio}/a/1.flac"]  # fmt: skip
    listing = tmp_path / "list.txt"
    listing.write_text("# a comment\naudio/a/1.flac\n\n/abs/x.wav\n", encoding="utf-8")
    assert [e["path"] for e in iter_entries(str(listing))] == [str(audio / "a/1.flac"), "/abs/x.wav"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio_filepath": "audio/z.mp3", "duration": 1.5, "utt_id": "u1", "text": "가"}\n',
                        encoding="utf-8")  # fmt: skip
    assert list(iter_entries(str(manifest))) == [{"path": str(audio / "z.mp3"), "id": "u1", "duration": 1.5}]
    manifest.write_text('{"audio_filepath": "a.wav"}\n{"text": "no audio"}\n', encoding="utf-8")
    with pytest.raises(SourceError, match=r"m\.jsonl:2: a manifest line needs audio_filepath"):
        list(iter_entries(str(manifest)))
    with pytest.raises(SourceError, match="no such file or folder"):
        list(iter_entries(str(tmp_path / "nothing.jsonl")))


# --- runs on Ray Data --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    files = {"missing": folder / "missing.wav", "empty": folder / "empty.wav", "unreadable": folder / "garbage.wav"}
    files["empty"].write_bytes(b"")
    files["unreadable"].write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + os.urandom(200))
    return files


@pytest.mark.slow
def test_ray_path_equals_the_single_process_and_failures_are_rows(exported, recipe, bad_files, tmp_path):
    rows = eval_rows(recipe, 40)
    manifest = tmp_path / "in.jsonl"
    with open(manifest, "w", encoding="utf-8") as f:
        for row in rows[:20]:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        for path in bad_files.values():  # between good files: they must not shift or stop anything
            f.write(json.dumps({"audio_filepath": str(path)}) + "\n")
        for row in rows[20:]:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    single = subprocess.run(korasr_cmd("transcribe", "--model", str(exported), "--json",
                                       *[r["audio_filepath"] for r in rows]),
                            capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
    expected = {json.loads(line)["audio"]: json.loads(line)["text"] for line in single.stdout.splitlines()}

    out = tmp_path / "out"
    proc = archive(exported, manifest, out, "--shard-size", "8", "--actors", "2", "--batch-size", "4")
    summary = json.loads(proc.stdout)
    assert summary == json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert (summary["files"], summary["transcribed"], summary["failed"]) == (43, 40, 3)
    assert summary["errors"] == {"empty": 1, "missing": 1, "unreadable": 1}
    assert summary["shards"] == 6 and summary["audio_hours"] == pytest.approx(
        sum(r["duration"] for r in rows) / 3600, abs=1e-3)  # fmt: skip
    got = read_parts(out)
    assert [r["index"] for r in got] == list(range(43))  # every entry once, in input order
    by_path = {r["path"]: r for r in got}
    assert {p: by_path[p]["text"] for p in expected} == expected  # identical to the single-process path
    confidences = {json.loads(line)["audio"]: json.loads(line)["confidence"] for line in single.stdout.splitlines()}
    assert {p: by_path[p]["confidence"] for p in expected} == confidences
    assert all(by_path[r["audio_filepath"]]["id"] == r["utt_id"] for r in rows)
    for kind, path in bad_files.items():
        assert by_path[str(path)]["error_kind"] == kind and str(path) in by_path[str(path)]["error"]
        assert by_path[str(path)]["text"] is None and by_path[str(path)]["confidence"] is None
    assert {r["model"] for r in got} == {
        f"export@{json.loads((exported / 'model.json').read_text())['source_sha256'][:12]}"
    }
    assert {r["decoder"] for r in got} == {"greedy-hangul"}  # a jamo model's default

    # the same run again: nothing to do, nothing rewritten
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    again = json.loads(
        archive(exported, manifest, out, "--shard-size", "8", "--actors", "1").stdout
    )  # pool size may change
    assert again["this_run"]["files"] == 0 and again["files"] == 43
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")} == stamps


@pytest.mark.slow
def test_parquet_from_a_uri_glob_with_word_times(exported, recipe, tmp_path):
    rows = eval_rows(recipe, 6)
    folder = tmp_path / "clips"
    folder.mkdir()
    for i, row in enumerate(rows):
        shutil.copy(row["audio_filepath"], folder / f"{i:02d}.wav")
    out = tmp_path / "out"
    archive(exported, f"file://{folder}/*.wav", out, "--format", "parquet", "--timestamps", "--shard-size", "4")
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    got = read_parts(out)
    assert [r["path"] for r in got] == [f"file://{folder}/{i:02d}.wav" for i in range(6)]
    from korasr.runtime import Recognizer

    results = Recognizer(exported).transcribe([r["audio_filepath"] for r in rows], timestamps=True)
    assert [r["text"] for r in got] == [r.text for r in results]
    assert [[w["word"] for w in r["words"]] for r in got] == [[w.text for w in r.words] for r in results]
    assert [r["confidence"] for r in got] == [round(r.confidence, 4) for r in results]
    assert [[w["confidence"] for w in r["words"]] for r in got] == [[round(w.confidence, 4) for w in r.words]
                                                                    for r in results]  # fmt: skip
    assert all(w["end"] >= w["start"] >= 0 for r in got for w in r["words"])


@pytest.mark.slow
def test_a_killed_run_resumes_and_writes_no_row_twice(exported, recipe, tmp_path):
    rows = eval_rows(recipe)
    manifest = tmp_path / "in.jsonl"
    with open(manifest, "w", encoding="utf-8") as f:
        for _ in range(4):
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    total = 4 * len(rows)
    out = tmp_path / "out"
    cmd = korasr_cmd("transcribe", "--model", str(exported), "--manifest", str(manifest), "--out", str(out),
                     "--shard-size", "20", "--actors", "1", "--threads", "1")  # fmt: skip
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while not (out / ".done" / "part-00001.json").exists():  # two shards written, the rest not
        assert first.poll() is None and time.monotonic() < deadline, "the first run ended before it was killed"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the whole group: the driver and its Ray processes, at once
    first.wait()
    # A shard is done when its part and its marker are both there; a kill between the two leaves a part the rerun
    # redoes, so only the parts with a marker count (and must stay untouched).
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")
                   if (out / ".done" / f"{p.name.split('.')[0]}.json").exists()}  # fmt: skip
    assert 2 <= len(done_before) < total // 20
    # What a kill in the middle of a write leaves (whether this kill did depends on timing): the rerun removes them.
    (out / ".part-00003.jsonl.1.tmp").write_text('{"index": 60}\n', encoding="utf-8")
    (out / ".done" / ".part-00003.json.1.tmp").write_text("{", encoding="utf-8")

    summary = json.loads(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    assert summary["files"] == total and summary["this_run"]["files"] == total - 20 * len(done_before)
    assert {n: m for n, m in ((p.name, p.stat().st_mtime_ns) for p in out.glob("part-*")) if n in done_before} \
        == done_before  # fmt: skip
    got = read_parts(out)
    assert [r["index"] for r in got] == list(range(total))  # every row exactly once
    assert [r["text"] for r in got[: len(rows)]] == [r["text"] for r in got[len(rows) : 2 * len(rows)]]
    assert not list(out.glob(".part-*")) and not list(out.glob("**/*.tmp"))


HOLD = """
import sys
from pathlib import Path
from korasr.fsutil import folder_lock
with folder_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_on_a_folder_in_use_stops_at_once_and_touches_nothing(exported, recipe, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(eval_rows(recipe, 1)[0]["audio_filepath"] + "\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    left = out / ".part-00000.jsonl.1.tmp"  # the live holder's write in progress: not the second run's to remove
    left.write_text("half", encoding="utf-8")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"  # type: ignore[union-attr]
        proc = archive(exported, listing, out, check=False)
        assert proc.returncode == 2 and f"is in use by another run (PID {holder.pid}" in proc.stderr, proc.stderr
        assert sorted(os.listdir(out)) == [".korasr.lock", left.name]
    finally:
        holder.communicate("", timeout=60)
    archive(exported, listing, out)  # the holder is gone: its temporary is swept, the run completes
    assert not left.exists() and len(read_parts(out)) == 1


@pytest.mark.slow
def test_out_folders_are_never_taken_over(exported, recipe, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(eval_rows(recipe, 1)[0]["audio_filepath"] + "\n", encoding="utf-8")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep", encoding="utf-8")
    proc = archive(exported, listing, foreign, check=False)
    assert proc.returncode == 2 and "not an archive run's folder" in proc.stderr and "thesis.tex" in proc.stderr
    assert sorted(os.listdir(foreign)) == ["thesis.tex"]

    out = tmp_path / "out"
    archive(exported, listing, out)
    (out / "notes.md").write_text("mine", encoding="utf-8")
    proc = archive(exported, listing, out, "--timestamps", check=False)  # another run: refused, keys named
    assert proc.returncode == 2 and "differs in timestamps" in proc.stderr and "--force" in proc.stderr
    archive(exported, listing, out, "--timestamps", "--force")
    assert (out / "notes.md").read_text(encoding="utf-8") == "mine"  # --force removes only what a run writes
    assert read_parts(out)[0]["words"]


# --- bounds and the resume fingerprint (no Ray, no model) --------------------------------------------------------


def test_an_actor_holds_a_bounded_amount_of_remote_audio(tmp_path, monkeypatch):
    """Issue 34 §6: a batch's remote files were all fetched and decoded before any was transcribed (64 hour-long
    files per actor). Now at most ``Settings.max_held_seconds`` of decoded remote audio is held at once (plus the
    file just read); local files are read by the runtime a batch at a time, long ones in chunks."""
    import io

    import numpy as np
    import pyarrow as pa
    import soundfile as sf

    from korasr.archive.worker import Settings, Transcriber
    from korasr.runtime import Result
    from korasr.runtime.audio import AudioLimits

    seconds = {f"s3://calls/{i:02d}.wav": 1.0 + i % 3 for i in range(10)}  # 1, 2 or 3 s each, 19 s in all
    blobs = {}
    for uri, length in seconds.items():
        buf = io.BytesIO()
        sf.write(buf, np.zeros(int(length * 16000), dtype="float32"), 16000, format="WAV", subtype="PCM_16")
        blobs[uri] = buf.getvalue()
    fetched: list[str] = []

    def fetch(self, uri: str) -> bytes:
        fetched.append(uri)
        return blobs[uri]

    class Recognizer:
        def __init__(self) -> None:
            self.groups: list[list[float]] = []
            self.fetched_before: list[int] = []

        def transcribe_arrays(self, waves, **_) -> list[Result]:  # type: ignore[no-untyped-def]
            self.groups.append([len(w) / 16000 for w in waves])
            self.fetched_before.append(len(fetched))
            return [Result(text=f"{len(w) / 16000:g}") for w in waves]

        def transcribe(self, paths, **_) -> list[Result]:  # type: ignore[no-untyped-def]
            return [Result(text=f"local {sf.info(str(p)).duration:g}") for p in paths]

    monkeypatch.setattr(Transcriber, "_fetch", fetch)
    actor = Transcriber.__new__(Transcriber)  # without its runtime session: a recorder stands in
    actor.settings = Settings(batch_size=16, max_held_seconds=5.0)
    actor.limits, actor._tmp, actor.recognizer = AudioLimits(max_seconds=60), None, Recognizer()
    local = tmp_path / "local.wav"  # local files, between the remote ones: read by the runtime, by path
    sf.write(local, np.zeros(8000, dtype="float32"), 16000)
    paths = [*seconds, "s3://calls/gone.wav", str(local), f"file://{local}"]
    batch = pa.Table.from_pylist([{"index": i, "path": p, "id": None, "duration": None} for i, p in enumerate(paths)])
    monkeypatch.setitem(blobs, "s3://calls/gone.wav", b"not audio")
    rows = actor(batch).to_pylist()
    assert [r["index"] for r in rows] == list(range(13))
    assert [r["text"] for r in rows[:10]] == [f"{s:g}" for s in seconds.values()]  # each row its own result
    assert rows[10]["error_kind"] == "unsupported" and rows[10]["text"] is None  # not audio: a row, not a crash
    assert [(r["text"], r["duration"]) for r in rows[11:]] == [("local 0.5", 0.5)] * 2
    assert sum(len(g) for g in actor.recognizer.groups) == 10
    assert all(sum(g) <= 5.0 for g in actor.recognizer.groups), actor.recognizer.groups
    # fetched as they are decoded, not all first: when a group is decoded, at most the next file is read ahead
    done = 0
    for group, before in zip(actor.recognizer.groups, actor.recognizer.fetched_before, strict=True):
        done += len(group)
        assert before <= done + 1, (actor.recognizer.groups, actor.recognizer.fetched_before)


def test_a_changed_lm_or_hotwords_file_is_another_run_not_a_resume(tmp_path):
    """Issue 34 §6: archive.json named the LM folder and the hotwords file but not their content, so a rerun with
    a rebuilt LM or edited hotwords resumed the old run's shards as if nothing changed."""
    from korasr.archive import ArchiveError, ArchiveOptions, Settings
    from korasr.archive.run import ARCHIVE_JSON, _claim

    export = tmp_path / "export"
    (export / "lm").mkdir(parents=True)
    (export / "model.json").write_text(json.dumps({"source_sha256": "ab" * 32}), encoding="utf-8")
    (export / "model.onnx").write_bytes(b"a graph")
    (export / "lm" / "lm.bin").write_bytes(b"bundled lm")
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "lm.json").write_text("{}", encoding="utf-8")
    (lm / "lm.bin").write_bytes(b"an lm")
    manifest = tmp_path / "in.jsonl"
    manifest.write_text('{"audio_filepath": "a.wav"}\n', encoding="utf-8")
    label = "beam 8 (lm lm, α 0.5, β 1, hotwords hot.txt)"  # what the label says is the same every time

    def options(out: Path, settings: Settings, lm_folder: Path | None) -> ArchiveOptions:
        return ArchiveOptions(source=str(manifest), out=out, model=export, model_label="m", decoder_label=label,
                              settings=settings, lm=lm_folder)  # fmt: skip

    external = Settings(decoder="beam", lm="_lm", hotword_lines=("서울\t2.0",))
    out = tmp_path / "out"
    first = _claim(options(out, external, lm))
    assert _claim(options(out, external, lm))["started"] == first["started"]  # the same run: it resumes
    (lm / "lm.bin").write_bytes(b"a rebuilt lm")
    with pytest.raises(ArchiveError, match="differs in lm_sha256"):
        _claim(options(out, external, lm))
    (lm / "lm.bin").write_bytes(b"an lm")
    edited = Settings(decoder="beam", lm="_lm", hotword_lines=("서울\t3.0",))
    with pytest.raises(ArchiveError, match="differs in hotwords_sha256"):
        _claim(options(out, edited, lm))
    assert json.loads((out / ARCHIVE_JSON).read_text(encoding="utf-8"))["started"] == first["started"]

    bundled, out = Settings(decoder="beam", lm="lm"), tmp_path / "out_bundled"  # the export's own lm/
    _claim(options(out, bundled, None))
    (export / "lm" / "lm.bin").write_bytes(b"another bundled lm")
    with pytest.raises(ArchiveError, match="differs in lm_sha256"):
        _claim(options(out, bundled, None))
