"""The model's life after training (issue 24), on the test suite's trained model and real components: MLflow's
registry in a temporary SQLite store, `korasr retrain` end to end (a new sample drop passes the gate and is promoted;
a poor candidate fails it and production stays), the webhook on a loopback receiver, and a serving process that
follows the alias through a promotion, a rollback and a version that does not load."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, eval_rows, korasr_cmd, run, serve_process


@contextlib.contextmanager
def registry_store(tmp: Path):  # type: ignore[no-untyped-def]
    """A registry of its own for one test (the process's environment and the children's)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "KORASR_REGISTRY_CACHE")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["KORASR_REGISTRY_CACHE"] = str(tmp / "cache")
    try:
        yield tmp
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def webhook_receiver():  # type: ignore[no-untyped-def]
    """A loopback HTTP server that keeps every JSON body POSTed to it."""
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def evaluated_report(exported: Path, recipe, out: Path) -> Path:  # type: ignore[no-untyped-def]
    from korasr.evaluate import evaluate

    m = recipe["manifests"]
    evaluate(exported, [m / "eval_clean.jsonl", m / "eval_other.jsonl"], out, progress=False)
    return out / "report.json"


def test_register_promote_rollback_and_models_uris(exported, recipe, tmp_path):
    """A version carries the export, its .nemo, CER per split with counts, normalization, lineage and parity;
    aliases move and production's history rolls back; models:/NAME@ALIAS serves as a model path."""
    from korasr import registry
    from korasr.fsutil import sha256_file

    with registry_store(tmp_path):
        report = evaluated_report(exported, recipe, tmp_path / "eval")
        scores = json.loads(report.read_text(encoding="utf-8"))["splits"]
        clean = str(recipe["manifests"] / "eval_clean.jsonl")
        v1 = registry.register(exported, "ko-test", report=report, scored_on=[clean])
        assert (v1.version, v1.aliases) == (1, ["candidate"])
        assert v1.metrics["eval_clean"]["cer"] == scores["eval_clean"]["cer"]
        assert v1.metrics["eval_clean"]["utterances"] == 125 and v1.metrics["eval_clean"]["characters"] > 1000
        lineage = json.loads(v1.tags["lineage"])
        train = str(recipe["manifests"] / "train.jsonl")
        assert lineage["manifests"][train] == sha256_file(train)  # from the training run's config
        assert lineage["manifests"][str(Path(clean).resolve())] == sha256_file(clean)
        assert json.loads(v1.tags["normalization"])["form"] == "phonetic"
        assert json.loads(v1.tags["parity"])["tolerance"] > 0 and v1.tags["has_nemo"] == "true"
        assert v1.tags["decoder"] == "greedy-hangul"  # what scored the metrics: a jamo model's default

        v2 = registry.register(exported, "ko-test", report=report, parent=1)
        assert json.loads(v2.tags["lineage"])["parent_version"] == 1
        assert registry.promote("ko-test", 1).aliases == ["production"]
        assert registry.promote("ko-test").version == 2  # default: @candidate's version
        assert registry.history("ko-test") == [1, 2]
        assert registry.rollback("ko-test").version == 1
        assert registry.show("ko-test", alias="production").version == 1
        with pytest.raises(registry.RegistryError, match="no earlier version"):
            registry.rollback("ko-test")

        # the local copy is the registered export, byte for byte; the .nemo too
        local = registry.resolve("models:/ko-test@production")
        assert (local / "model.onnx").read_bytes() == (exported / "model.onnx").read_bytes()
        nemo = registry.resolve("models:/ko-test/1", "nemo")
        meta = json.loads((exported / "model.json").read_text(encoding="utf-8"))
        assert sha256_file(nemo) == meta["source_sha256"]
        wav = eval_rows(recipe, 1)[0]["audio_filepath"]
        by_ref = run("transcribe", "--model", "models:/ko-test@production", wav).stdout
        assert by_ref == run("transcribe", "--model", str(exported), wav).stdout and by_ref.strip()
        listed = run("registry", "list", "--name", "ko-test").stdout
        assert "| 1 | @production |" in listed and "| 2 | @candidate |" in listed

        # refusals name what is wrong
        bad = subprocess.run(korasr_cmd("transcribe", "--model", "models:/ko-test@nope", wav), capture_output=True,
                             text=True, cwd=ROOT)  # fmt: skip
        assert bad.returncode == 2 and "no alias @nope" in bad.stderr
        damaged = tmp_path / "damaged"
        shutil.copytree(exported, damaged)
        (damaged / "model.onnx").write_bytes((damaged / "model.onnx").read_bytes()[:-10])
        with pytest.raises(registry.RegistryError, match=r"model.onnx: sha256 differs"):
            registry.register(damaged, "ko-test")
        with pytest.raises(registry.RegistryError, match="not a korasr export folder"):
            registry.register(tmp_path / "eval", "ko-test")
        assert [v.version for v in registry.list_versions("ko-test")] == [1, 2]


def test_training_logs_its_run_to_mlflow(trained):
    """The suite's training run (its MLflow store is the suite's temporary one): params, metrics per step, the
    resolved config and the .nemo as artifacts."""
    from mlflow import MlflowClient

    record = json.loads((trained.parent / "mlflow.json").read_text(encoding="utf-8"))
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.data.params and "train_loss" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 3
    artifacts = {a.path for top in ("config", "model") for a in client.list_artifacts(run.info.run_id, top)}
    assert "config/korasr_run.yaml" in artifacts and f"model/{trained.name}" in artifacts


def retrain_cmd(name: str, recipe, new_data: Path, work: Path, webhook: str, *extra: str) -> list[str]:  # type: ignore[no-untyped-def]
    m = recipe["manifests"]
    return korasr_cmd(
        "retrain", "--name", name, "--recipe", "recipes/sample", "--new-data", str(new_data),
        "--eval", str(m / "eval_clean.jsonl"), "--eval", str(m / "eval_other.jsonl"), "--replay", str(m / "train.jsonl"),
        "--max-cer", "eval_clean=20", "--max-cer", "eval_other=99", "--work", str(work), "--webhook", webhook,
        "--form", "phonetic", "--parity-manifest", str(m / "dev.jsonl"),
        f"model.tokenizer.dir={recipe['tokenizer']}", f"model.validation_ds.manifest_filepath={m / 'dev.jsonl'}",
        "model.train_ds.perturb_speed=false", "trainer.val_check_interval=15", *extra,
    )  # fmt: skip


def test_retrain_promotes_a_good_candidate_and_stops_a_poor_one(exported, recipe, tmp_path):
    """Production is the suite's model. A new sample drop (another seed) is fine-tuned in, passes the gate and is
    registered with its parent. Production is then moved by hand: `--promote` is refused (the gate compared against
    the old production) and production stays; moved back, `--promote` reuses every finished stage and moves it, and
    the webhook gets the table; the same command again does nothing. A stricter bound re-gates without training and
    fails. Then a poor candidate (shuffled labels, a high learning rate) on new data that also repeats eval
    utterances: those are refused at ingest, the gate fails with exit 3, nothing is registered and production
    stays. Last, the first drop with other training settings trains anew in a folder of its own."""
    from korasr import registry
    from korasr.retrain import read_rows

    def state_of(work: Path) -> dict:
        return json.loads(work.joinpath("state.json").read_text(encoding="utf-8"))

    with registry_store(tmp_path), webhook_receiver() as (hook, received):
        report = evaluated_report(exported, recipe, tmp_path / "eval")
        registry.register(exported, "ko-life", report=report)
        registry.promote("ko-life", 1)
        drop = tmp_path / "drop" / "KsponSpeech"
        run("sample-corpus", str(drop), "--utterances", "160", "--seed", "12", "--variety", "narrow", "--text",
            "templates", "--quiet")  # fmt: skip
        cmd = retrain_cmd("ko-life", recipe, drop, tmp_path / "work", hook, "--tolerance-rel", "50",
                          "--tolerance-abs", "5", "trainer.max_steps=30")  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-4000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["register"]["version"] == 2 and registry.show("ko-life", alias="production").version == 1
        assert result["ingest"]["train"] + result["ingest"]["heldout"] >= 150
        work = next((tmp_path / "work").iterdir())
        assert state_of(work)["stages"]["promote"]["promoted"] is False and len(received) == 1

        # production moved by hand since the gate: a --promote now is a stale decision, refused; nothing moves
        registry.register(exported, "ko-life", report=report)
        registry.promote("ko-life", 3)
        stale = subprocess.run([*cmd, "--promote"], capture_output=True, text=True, cwd=ROOT)
        assert stale.returncode == 2 and "production is now version 3" in stale.stderr, stale.stderr[-3000:]
        assert registry.show("ko-life", alias="production").version == 3 and len(received) == 1

        registry.promote("ko-life", 1)  # moved back: the gate's comparison holds again
        proc = subprocess.run([*cmd, "--promote"], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-4000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        v2 = registry.show("ko-life", alias="production")
        assert v2.version == 2 and json.loads(v2.tags["lineage"])["parent_version"] == 1
        assert set(v2.metrics) >= {"eval_clean", "eval_other", "increment_heldout"}
        assert registry.history("ko-life") == [1, 3, 1, 2]
        state = state_of(work)
        assert set(state["stages"]) == {"ingest", "train", "evaluate", "gate", "export", "register", "promote",
                                        "notify"}  # fmt: skip
        assert state["stages"]["train"]["parent"] == 1 and state["stages"]["notify"]["delivered"]
        assert state["stages"]["promote"] == {**state["stages"]["promote"], "promoted": True, "previous": 1}
        assert len(list((work / "train").iterdir())) == 1  # the promotion reused the training
        assert len(received) == 2 and "| eval_clean | 125 |" in received[1]["text"] and "PASS" in received[1]["text"]
        assert (
            received[1]["korasr"]["passed"]
            and received[1]["korasr"]["promoted"]
            and received[1]["korasr"]["version"] == 2
        )

        again = subprocess.run([*cmd, "--promote"], capture_output=True, text=True, cwd=ROOT)  # all recorded: no work
        assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1]) == result
        assert state_of(work) == state and len(received) == 2
        assert [v.version for v in registry.list_versions("ko-life")] == [1, 2, 3]

        # a stricter bound is another gate, decided anew on the same evaluation: it fails, nothing trains or moves
        strict = subprocess.run([*cmd, "--promote", "--max-cer", "eval_clean=0.01"], capture_output=True, text=True,
                                cwd=ROOT)  # fmt: skip
        assert strict.returncode == 3 and "FAIL" in strict.stderr, strict.stderr[-3000:]
        assert len(list((work / "train").iterdir())) == 1 and len(list((work / "eval").iterdir())) == 1
        assert registry.show("ko-life", alias="production").version == 2
        assert len(received) == 3 and not received[2]["korasr"]["passed"]

        # a poor candidate: the drop's utterances with their texts shuffled, plus eval utterances that must not leak
        rows = read_rows(Path(state["stages"]["ingest"]["manifests"]["train"]))
        texts = [r["text"] for r in rows]
        texts = texts[1:] + texts[:1]
        leaks = [eval_rows(recipe, 2)[0], {**eval_rows(recipe, 2)[1], "audio_filepath": rows[0]["audio_filepath"]}]
        poor = tmp_path / "poor.jsonl"
        poor.write_text("".join(json.dumps({**r, "text": t}, ensure_ascii=False) + "\n"
                                for r, t in zip(rows, texts, strict=True)) +
                        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in leaks), encoding="utf-8")  # fmt: skip
        poor_cmd = retrain_cmd("ko-life", recipe, poor, tmp_path / "work", hook, "--promote", "--holdout", "0",
                               "trainer.max_steps=40", "model.optim.lr=0.01", "model.optim.sched.warmup_steps=2")  # fmt: skip
        proc = subprocess.run(poor_cmd, capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 3, proc.stderr[-4000:]
        assert "FAIL" in proc.stderr and "failed the gate" in proc.stderr
        poor_work = next(p for p in (tmp_path / "work").iterdir() if p != work)
        refused = read_rows(poor_work / "ingest" / "refused.jsonl")
        reasons = sorted(r["reason"].split(" of the fixed split")[0] for r in refused)
        assert "audio identical to an utterance" in reasons and "text identical to an utterance" in reasons
        assert registry.show("ko-life", alias="production").version == 2
        assert [v.version for v in registry.list_versions("ko-life")] == [1, 2, 3]
        assert not (poor_work / "export").exists()
        assert len(received) == 4 and not received[3]["korasr"]["passed"] and "FAIL" in received[3]["text"]

        # the first drop again with other training settings: a new training in its own folder, never the old result
        other = subprocess.run(retrain_cmd("ko-life", recipe, drop, tmp_path / "work", hook, "--tolerance-rel", "50",
                                           "--tolerance-abs", "5", "trainer.max_steps=2", "model.optim.lr=0.05"),
                               capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        assert other.returncode in (0, 3), other.stderr[-4000:]
        assert "finished before with other inputs" in other.stderr and "overrides" in other.stderr
        assert len(list((work / "train").iterdir())) == 2
        retrained = state_of(work)["stages"]["train"]
        assert retrained["nemo_sha256"] != state["stages"]["train"]["nemo_sha256"] and retrained["parent"] == 2
        assert registry.show("ko-life", alias="production").version == 2


def test_retrain_never_runs_blind(tmp_path):
    """A registry that does not answer (a port nothing listens on, with credentials in its URI) stops `korasr
    retrain` before any work, naming the URI without the password and how long MLflow was let retry; a production
    alias whose version was deleted stops it too; only a registry that answered "nothing in production" lets a
    first model train. Production never moves."""
    from korasr import registry

    manifest = tmp_path / "eval_clean.jsonl"
    manifest.write_text('{"audio_filepath": "x.wav", "text": "가"}\n', encoding="utf-8")
    args = ["retrain", "--name", "ko-blind", "--recipe", "recipes/sample", "--new-data", str(manifest), "--eval",
            str(manifest), "--work", str(tmp_path / "work"), "--promote"]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://korasr:s3cret@127.0.0.1:9"}
    proc = subprocess.run(korasr_cmd(*args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "cannot tell what is in production" in proc.stderr and "http://***@127.0.0.1:9" in proc.stderr
    assert "s3cret" not in proc.stderr and "MLFLOW_HTTP_REQUEST_MAX_RETRIES" in proc.stderr
    assert not (tmp_path / "work").exists()

    with registry_store(tmp_path):
        assert registry.production("ko-blind") is None  # the registry answered: no such model
        c = registry.client()
        c.create_registered_model("ko-blind")
        assert registry.production("ko-blind") is None  # the model, no alias ever
        run_id = c.create_run(registry._experiment_id(c)).info.run_id
        for _ in range(2):
            c.create_model_version("ko-blind", source=f"runs:/{run_id}/export", run_id=run_id)
        registry.promote("ko-blind", 2)
        assert registry.production("ko-blind").version == 2
        c.delete_model_version("ko-blind", "2")  # MLflow drops the alias with the version
        with pytest.raises(registry.RegistryError, match=r"@production is gone \(it pointed at version 2"):
            registry.production("ko-blind")
        proc = subprocess.run(korasr_cmd(*args), capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 2 and "@production is gone" in proc.stderr, proc.stderr[-3000:]
        assert not (tmp_path / "work").exists()
        assert "production" not in c.get_registered_model("ko-blind").aliases


def test_promotion_is_a_compare_and_set(tmp_path):
    """The promote stage reads production again and moves it only when it still names the version the gate
    compared against; otherwise it refuses naming both, and production stays where it was moved."""
    from korasr import registry
    from korasr.retrain import RetrainError, RetrainOptions, promote_stage

    with registry_store(tmp_path):
        c = registry.client()
        c.create_registered_model("ko-cas")
        run_id = c.create_run(registry._experiment_id(c)).info.run_id
        for _ in range(3):
            c.create_model_version("ko-cas", source=f"runs:/{run_id}/export", run_id=run_id)
        registry.promote("ko-cas", 3)  # moved by hand after a gate that compared version 2 against version 1
        options = RetrainOptions(name="ko-cas", recipe="r", new_data=str(tmp_path), eval_manifests=[], promote=True)
        with pytest.raises(RetrainError, match="compared version 2 against version 1, and production is now version 3"):
            promote_stage(options, {"parent": 1}, {"version": 2})
        assert registry.production("ko-cas").version == 3
        assert promote_stage(options, {"parent": 3}, {"version": 2}) == {"promoted": True, "previous": 3}
        assert registry.production("ko-cas").version == 2
        assert promote_stage(options, {"parent": 3}, {"version": 2})["already"]  # a rerun: nothing to move
        options.promote = False
        assert not promote_stage(options, {"parent": 2}, {"version": 1})["promoted"]
        assert registry.history("ko-cas") == [3, 2]


def test_the_service_follows_the_alias_and_keeps_serving_through_a_bad_version(exported, recipe, tmp_path, monkeypatch):
    """`korasr serve --model models:/NAME@production --follow 1`: a promotion and a rollback are each loaded, warmed
    and swapped in while requests keep being answered; a version whose files are damaged in the store does not
    load, the service says so (/admin/status, the reload counter), keeps serving and retries it with back-off;
    /metrics names the version and its registered CER; POST /admin/reload takes the operator key only."""
    from korasr import registry

    wav = eval_rows(recipe, 1)[0]["audio_filepath"]
    with registry_store(tmp_path):
        report = evaluated_report(exported, recipe, tmp_path / "eval")
        for _ in range(3):
            registry.register(exported, "ko-serve", report=report)
        registry.promote("ko-serve", 1)
        key, admin = "k" * 24, "a" * 24
        headers = {"Authorization": f"Bearer {key}"}
        monkeypatch.setenv("KORASR_ADMIN_KEY", admin)

        def get(url: str) -> dict:  # the operator's view
            request = urllib.request.Request(url.replace("/health", "/admin/status"), headers={"X-API-Key": admin})
            with urllib.request.urlopen(request, timeout=10) as r:
                return json.loads(r.read())

        def transcribe(url: str) -> tuple[int, dict]:
            import requests

            with open(wav, "rb") as f:
                r = requests.post(f"{url}/v1/transcribe", files={"audio": f}, headers=headers, timeout=60)
            return r.status_code, r.json()

        def wait_for(url: str, version: int, answers: list) -> None:
            deadline = time.monotonic() + 90
            while get(f"{url}/health").get("registered", {}).get("version") != version:
                answers.append(transcribe(url))  # requests keep flowing through the swap
                assert time.monotonic() < deadline, get(f"{url}/health")
                time.sleep(0.2)

        with serve_process("models:/ko-serve@production", tmp_path / "serve.log", "--follow", "1", key=key) as url:
            health = get(f"{url}/health")
            assert health["registered"]["version"] == 1 and health["cer"]["eval_clean"] > 0
            answers: list = []
            registry.promote("ko-serve", 2)
            wait_for(url, 2, answers)
            registry.rollback("ko-serve")
            wait_for(url, 1, answers)
            status, body = transcribe(url)
            assert status == 200 and body["version"] == 1 and body["text"]
            assert all(s == 200 and b["text"] == body["text"] for s, b in answers), answers

            # version 3's export is damaged in the artifact store: it fails to load, version 1 keeps serving
            v3 = registry.show("ko-serve", version=3)
            store = Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")).parent / "mlflow-artifacts"
            onnx = next(p for p in store.rglob("model.onnx") if v3.run_id in str(p))
            onnx.write_bytes(b"not an onnx graph")
            registry.promote("ko-serve", 3)
            deadline = time.monotonic() + 60
            while "reload_error" not in get(f"{url}/health"):
                assert time.monotonic() < deadline
                time.sleep(0.3)
            assert get(f"{url}/health")["registered"]["version"] == 1
            deadline = time.monotonic() + 60  # tried again, 2 then 4 follow intervals later, not given up on
            while (get(f"{url}/health")["follow"].get("retrying") or {}).get("attempts", 0) < 2:
                assert time.monotonic() < deadline, get(f"{url}/health")
                time.sleep(0.3)
            status, body = transcribe(url)
            assert status == 200 and body["version"] == 1
            with urllib.request.urlopen(urllib.request.Request(f"{url}/metrics", headers=headers), timeout=10) as r:
                metrics = r.read().decode()
            assert 'korasr_model_reloads_total{outcome="failed"}' in metrics
            assert 'version="1"' in metrics and 'stt_model_cer{split="eval_clean"}' in metrics
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(f"{url}/admin/reload", method="POST"), timeout=10)
            assert refused.value.code == 401
            with pytest.raises(urllib.error.HTTPError) as refused:  # a client key is no operator key
                urllib.request.urlopen(urllib.request.Request(f"{url}/admin/reload", method="POST", headers=headers),
                                       timeout=10)  # fmt: skip
            assert refused.value.code == 403
            with urllib.request.urlopen(f"{url}/health", timeout=10) as r:  # a load balancer's view: no details
                assert json.loads(r.read()) == {"status": "ok", "ready": True}
            forced = urllib.request.Request(f"{url}/admin/reload?force=true", method="POST",
                                            headers={"X-API-Key": admin})  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as failed:  # version 3 still does not load: 502, nothing moves
                urllib.request.urlopen(forced, timeout=60)
            assert failed.value.code == 502 and json.loads(failed.value.read())["version"] == 1


def _scored(folder: Path, split: str, refs: list[str], hyps: list[str]) -> None:
    from korasr.evaluate import score_files

    folder.mkdir(parents=True, exist_ok=True)
    hyp = folder / f"{split}.hyp.jsonl"
    lines = [json.dumps({"ref": r, "hyp": h}, ensure_ascii=False) + "\n" for r, h in zip(refs, hyps, strict=True)]
    hyp.write_text("".join(lines), encoding="utf-8")
    report = folder / "report.json"
    previous = json.loads(report.read_text(encoding="utf-8"))["splits"] if report.is_file() else {}
    files = {s: folder / f"{s}.hyp.jsonl" for s in [*previous, split]}
    score_files(files, folder)


def test_the_gate_rules_and_how_much_a_split_can_tell(tmp_path):
    """The gate on reports the test writes: the absolute bound per split, the tolerance against production (the
    larger of absolute and relative), and a paired bootstrap interval that contains the observed difference and is
    wider on 20 utterances than on 400 with the same error rates."""
    from korasr.retrain import RetrainOptions, format_gate, gate_rows

    ref = "가나다라마바사아자차"  # 10 characters
    one_wrong = "가나다라마바사아자카"  # 1 substitution: 10% CER
    for n, split in ((400, "eval_big"), (20, "eval_small")):
        prod = [ref] * n
        cand = [one_wrong if i % 10 == 0 else ref for i in range(n)]  # 1% CER
        _scored(tmp_path / "prod", split, [ref] * n, prod)
        _scored(tmp_path / "cand", split, [ref] * n, cand)
    evaluated = {"candidate": {"dir": str(tmp_path / "cand")}, "production": {"dir": str(tmp_path / "prod")}}
    manifests = [str(tmp_path / "eval_big.jsonl"), str(tmp_path / "eval_small.jsonl")]
    for m in manifests:
        Path(m).write_text("{}\n", encoding="utf-8")

    def gate(**kw):  # type: ignore[no-untyped-def]
        options = RetrainOptions(name="x", recipe="r", new_data=str(tmp_path), eval_manifests=manifests, **kw)
        return {r["split"]: r for r in gate_rows(options, evaluated)}

    rows = gate()  # production 0%, candidate 1%: within the default 0.5-point tolerance? no: 1.0 > 0.5
    assert rows["eval_big"]["candidate_cer"] == 1.0 and rows["eval_big"]["production_cer"] == 0.0
    assert not rows["eval_big"]["relative_ok"] and rows["eval_big"]["absolute_ok"]
    assert gate(tolerance_abs=1.0)["eval_big"]["passed"]
    assert not gate(tolerance_abs=1.0, max_cer={"*": 5.0, "eval_big": 0.5})["eval_big"]["passed"]
    big, small = rows["eval_big"]["delta_95"], rows["eval_small"]["delta_95"]
    assert big[0] <= 1.0 <= big[1] and small[0] <= 1.0 <= small[1]
    assert small[1] - small[0] > 2 * (big[1] - big[0])
    table = format_gate(list(rows.values()))
    assert "| eval_small | 20 | 200 | 0.00 | 1.00 |" in table and "FAIL" in table


def test_redo_starts_the_stage_afresh(tmp_path):
    """``--redo train`` forgets train and every later stage and removes the training folder, so the rerun trains
    anew instead of taking up the finished run's last checkpoint (which trains nothing); earlier stages stay."""
    from korasr.retrain import RetrainOptions, State

    options = RetrainOptions(name="x", recipe="r", new_data=str(tmp_path), eval_manifests=[])
    state = State(tmp_path / "work", options)
    for stage in ("ingest", "train", "evaluate", "gate"):
        state.finish(stage, {"stage": stage})
    checkpoint = tmp_path / "work" / "train" / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"x")
    (tmp_path / "work" / "ingest").mkdir()
    (tmp_path / "work" / "eval" / "candidate").mkdir(parents=True)
    state.forget("gate")  # a later stage: the training and its evaluation stay
    assert checkpoint.is_file() and (tmp_path / "work" / "eval" / "candidate").is_dir()
    state.forget("train")
    reread = State(tmp_path / "work", options)
    assert reread.done("ingest") and not reread.done("train") and not reread.done("gate")
    assert not (tmp_path / "work" / "train").exists() and (tmp_path / "work" / "ingest").is_dir()
    assert not (tmp_path / "work" / "eval").exists()  # the evaluation of the old candidate is gone with it


def _fetch_in_a_process(ref: str, out: str) -> None:
    from korasr import registry

    try:
        path = registry.fetch(registry.resolve_version(ref))
        Path(out).write_text(str(path), encoding="utf-8")
    except Exception as e:
        Path(out).write_text(f"ERROR {type(e).__name__}: {e}", encoding="utf-8")


def test_concurrent_fetches_of_one_version_end_with_one_complete_copy(tmp_path):
    """Six processes and four threads fetch the same version into one cache at once (as the workers of `serve
    --workers N` and replicas on a shared volume do after a promotion): every one gets the same complete copy, none
    fails, and no temporary folder is left. Then, with the registry down, `resolve(..., offline_ok=True)` serves the
    version the alias last resolved to from that cache (and without offline_ok the outage is an error)."""
    import concurrent.futures
    import multiprocessing

    import numpy as np

    from korasr import registry

    with registry_store(tmp_path):
        export = tmp_path / "export"
        export.mkdir()
        payload = np.random.default_rng(0).bytes(24 << 20)  # a download that takes a while
        (export / "model.onnx").write_bytes(payload)
        (export / "model.json").write_text("{}", encoding="utf-8")
        c = registry.client()
        c.create_registered_model("ko-fetch")
        run_id = c.create_run(registry._experiment_id(c)).info.run_id
        c.log_artifacts(run_id, str(export), "export")
        c.create_model_version("ko-fetch", source=f"runs:/{run_id}/export", run_id=run_id)
        registry.promote("ko-fetch", 1)
        ref = "models:/ko-fetch@production"

        ctx = multiprocessing.get_context("spawn")
        outs = [tmp_path / f"p{i}.txt" for i in range(6)]
        procs = [ctx.Process(target=_fetch_in_a_process, args=(ref, str(o))) for o in outs]
        for p in procs:
            p.start()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            threads = list(pool.map(lambda _: registry.fetch(registry.resolve_version(ref)), range(4)))
        for p in procs:
            p.join(120)
        answers = {o.read_text(encoding="utf-8") for o in outs} | {str(t) for t in threads}
        target = registry.cache_root() / "ko-fetch" / "v1" / "export"
        assert answers == {str(target)}, answers
        assert (target / "model.onnx").read_bytes() == payload
        assert sorted(p.name for p in target.parent.iterdir()) == [".export.lock", "export"]

        os.environ["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"
        with pytest.raises(registry.RegistryUnavailable, match=r"127\.0\.0\.1:9"):
            registry.resolve(ref)
        assert registry.resolve(ref, offline_ok=True) == target
        assert registry.resolve_version(ref, offline_ok=True).from_cache


def test_replayed_rows_whose_audio_is_an_eval_utterance_stay_out_of_the_mix(tmp_path):
    """The leak guard checks the replay manifests too: a replayed row whose audio is an evaluation utterance (the
    same samples in another file and container) is left out of the fine-tuning mix and recorded with its reason;
    rows that only share an evaluation sentence's text stay (a corpus's train split does by design)."""
    import numpy as np
    import soundfile as sf

    from korasr.retrain import RetrainOptions, _mix, ingest, read_rows

    def clip(name: str, seed: int, fmt: str = "WAV") -> str:
        path = tmp_path / name
        samples = (np.random.default_rng(seed).standard_normal(16000 + seed) * 3000).astype("int16")
        sf.write(path, samples, 16000, format=fmt, subtype="PCM_16")
        return str(path)

    def manifest(name: str, rows: list[tuple[str, str]]) -> str:
        path = tmp_path / name
        path.write_text("".join(json.dumps({"audio_filepath": a, "text": t, "duration": 1.0}, ensure_ascii=False)
                                + "\n" for a, t in rows), encoding="utf-8")  # fmt: skip
        return str(path)

    eval_manifest = manifest("eval_clean.jsonl", [(clip("e1.wav", 1), "평가 하나"), (clip("e2.wav", 2), "평가 둘")])
    replay = manifest("train.jsonl", [(clip("t1.wav", 11), "학습 하나"), (clip("copy.flac", 2, "FLAC"), "다른 글"),
                                      (clip("t3.wav", 13), "평가 하나")])  # fmt: skip
    drop = manifest("drop.jsonl", [(clip("n1.wav", 21), "새 문장 하나"), (clip("n2.wav", 22), "새 문장 둘")])
    options = RetrainOptions(name="x", recipe="r", new_data=drop, eval_manifests=[eval_manifest], replay=[replay],
                             holdout=0.0, replay_ratio=10.0)  # fmt: skip
    result = ingest(options, tmp_path / "work")
    assert result["replay_refused"] == 1
    leaks = read_rows(Path(result["manifests"]["replay_refused"]))
    assert leaks == [{"manifest": replay, "row": 2, "utt_id": None,
                      "reason": "audio identical to an utterance of the fixed split eval_clean"}]  # fmt: skip
    mix = _mix(options, Path(result["manifests"]["train"]), tmp_path / "mix.jsonl",
               Path(result["manifests"]["replay_refused"]))  # fmt: skip
    mixed = {r["audio_filepath"] for r in read_rows(tmp_path / "mix.jsonl")}
    assert mix["replayed_utterances"] == 2 and str(tmp_path / "copy.flac") not in mixed
    assert {str(tmp_path / "t1.wav"), str(tmp_path / "t3.wav")} <= mixed
