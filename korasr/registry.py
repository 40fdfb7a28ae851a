"""The model registry: export folders become versions of an MLflow registered model; aliases say which one serves.

A version carries what a team needs to trust it later: the export folder (and the ``.nemo`` it came from, so that a
retraining can fine-tune from it), its CER per split and the normalization it was scored under, its lineage (git
commit, the training run's resolved config, the SHA-256 of every manifest it trained and was scored on, the parent
version it was fine-tuned from) and the export's parity results. Promotion moves *aliases* (``candidate``,
``production``; MLflow's stages are deprecated), and every move of ``production`` is appended to a history tag on
the registered model, so ``rollback`` moves it back to the version before.

The store is embedded by default: ``sqlite:///exp/mlflow.db`` with artifacts beside it in ``exp/mlflow-artifacts``,
relative to the working directory (the repository root under make). ``MLFLOW_TRACKING_URI`` (and, where the team
keeps the registry apart, ``MLFLOW_REGISTRY_URI``) point it at a team's server unchanged.

A registry that cannot be reached is never mistaken for an empty one: every call goes through ``_call``, which turns
MLflow's "does not exist" into :class:`RegistryNotFound` and everything else (connection refused, a timeout, an auth
failure, a database error) into :class:`RegistryUnavailable`, naming the tracking URI without its credentials. MLflow's
HTTP client retries with back-off for minutes by default; unless the environment says otherwise we bound it
(``HTTP_DEFAULTS``: 2 retries, 10 s per request), so an outage is reported in seconds. ``models:/NAME@ALIAS`` and
``models:/NAME/VERSION`` resolve to a local copy of the export (``resolve``), cached per version under
``exp/registry-cache`` and written under a temporary name first, so ``transcribe``, ``evaluate`` and ``serve`` take
them wherever they take an export folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from korasr.errors import KorasrError, without_credentials
from korasr.fsutil import rename_tree_durably, replace_durably, sha256_file

log = logging.getLogger(__name__)

EXPERIMENT = "korasr-registry"
ALIASES = ("candidate", "production")
HISTORY_TAG = "korasr.production_history"
REF = re.compile(
    r"models:/(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]{0,127})(?:@(?P<alias>[a-z][a-z0-9_\-]{0,63})|/(?P<version>\d+))"
)
EXPORT_FORMAT = "korasr-export/1"


class RegistryError(KorasrError, RuntimeError):
    """A registry operation that cannot be done; the message names the model, version or file and why."""


class RegistryNotFound(RegistryError):
    """The registry answered: the model, version or alias does not exist."""


class RegistryUnavailable(RegistryError):
    """The registry did not answer (unreachable, timed out, refused the credentials, failed): nothing is known."""


# MLflow's HTTP client: 7 retries with a back-off factor of 2 and 120 s per request by default (minutes before an
# outage surfaces). Ours, unless the environment sets them: a down server is reported within about 35 s at worst
# (3 tries × 10 s + 3 s of back-off) and at once when the port refuses.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # fmt: skip


def redact(uri: str) -> str:
    """A URI as it may be printed: ``user:password@`` and query strings (tokens) removed."""
    return without_credentials(uri.split("?", 1)[0])


def _bounds() -> str:
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    return (f"gave up after {retries} retries of {timeout} s each (MLFLOW_HTTP_REQUEST_MAX_RETRIES, "
            "MLFLOW_HTTP_REQUEST_TIMEOUT)")  # fmt: skip


def _call(what: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """``fn(*args, **kwargs)`` against the registry: "does not exist" becomes :class:`RegistryNotFound`, every other
    failure :class:`RegistryUnavailable`; both name ``what`` and the tracking URI (without credentials)."""
    from mlflow.exceptions import MlflowException

    try:
        return fn(*args, **kwargs)
    except MlflowException as e:
        cause = str(e.message).splitlines()[0][:400]
        # a missing alias is INVALID_PARAMETER_VALUE "… alias X not found", a missing model or version
        # RESOURCE_DOES_NOT_EXIST: both are the registry's answer, as is any other refusal of a parameter
        if e.error_code == "RESOURCE_DOES_NOT_EXIST" or (e.error_code == "INVALID_PARAMETER_VALUE" and
                                                        "not found" in cause):  # fmt: skip
            raise RegistryNotFound(f"{what}: does not exist in the registry at {redact(tracking_uri())}") from None
        if e.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE"):
            raise RegistryError(f"{what}: the registry at {redact(tracking_uri())} refused: "
                                f"{without_credentials(cause)}") from None  # fmt: skip
        raise RegistryUnavailable(f"{what}: the registry at {redact(tracking_uri())} failed ({e.error_code}: "
                                  f"{without_credentials(cause)}; {_bounds()})") from None  # fmt: skip
    except RegistryError:
        raise
    except Exception as e:  # requests' ConnectionError, SQLAlchemy's OperationalError, a timeout, an OSError
        cause = f"{type(e).__name__}: {without_credentials(str(e).splitlines()[0] if str(e) else '')}"[:400]
        raise RegistryUnavailable(f"{what}: the registry at {redact(tracking_uri())} did not answer ({cause}; "
                                  f"{_bounds()})") from None  # fmt: skip


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the embedded store ``exp/mlflow.db`` under the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    Path("exp").mkdir(exist_ok=True)
    return f"sqlite:///{Path('exp/mlflow.db').resolve()}"


def artifact_location() -> str | None:
    """Where an embedded (SQLite) store keeps artifacts: ``mlflow-artifacts`` beside its database file. A server
    decides for itself (None)."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlflow-artifacts").as_uri()


def client():  # type: ignore[no-untyped-def]
    """An MlflowClient on the tracking URI (and ``MLFLOW_REGISTRY_URI`` when set)."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(), registry_uri=os.environ.get("MLFLOW_REGISTRY_URI"))


def _experiment_id(c) -> str:  # type: ignore[no-untyped-def]
    found = _call(f"experiment {EXPERIMENT!r}", c.get_experiment_by_name, EXPERIMENT)
    if found is not None:
        return found.experiment_id
    return _call(f"experiment {EXPERIMENT!r}", c.create_experiment, EXPERIMENT, artifact_location=artifact_location())


@dataclass
class Version:
    name: str
    version: int
    aliases: list[str]
    tags: dict[str, str]
    run_id: str | None
    source: str
    created_ms: int
    metrics: dict[str, dict] = field(default_factory=dict)
    from_cache: bool = False  # resolved from the local cache while the registry did not answer

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "aliases": self.aliases, "run_id": self.run_id,
                "source": self.source, "created_ms": self.created_ms, "metrics": self.metrics,
                "tags": {k: v for k, v in self.tags.items() if not k.startswith("metrics.")}}  # fmt: skip


def _version(c, name: str, mv) -> Version:  # type: ignore[no-untyped-def]
    model = _call(f"registered model {name!r}", c.get_registered_model, name)
    aliases = [a for a, v in model.aliases.items() if int(v) == int(mv.version)]
    tags = dict(mv.tags or {})
    metrics = json.loads(tags.get("metrics", "{}"))
    return Version(name, int(mv.version), sorted(aliases), tags, mv.run_id, mv.source, mv.creation_timestamp, metrics)


# --- what a version records -------------------------------------------------------------------------------------


def read_export(export_dir: Path) -> dict:
    meta_path = export_dir / "model.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{export_dir}: not a korasr export folder (no model.json): run korasr export") from None
    except json.JSONDecodeError as e:
        raise RegistryError(f"{meta_path}: not JSON ({e})") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise RegistryError(f"{meta_path}: format {meta.get('format')!r}, expected {EXPORT_FORMAT!r}")
    for name, digest in (meta.get("sha256") or {}).items():  # a corrupt or edited export is never registered
        path = export_dir / name
        if not path.is_file() or sha256_file(path) != digest:
            raise RegistryError(f"{path}: {'missing' if not path.is_file() else 'sha256 differs from model.json'}"
                                " (a damaged export: export it again)")  # fmt: skip
    return meta


def metrics_of(report: dict) -> dict[str, dict]:
    """Per split: CER, CER+space, WER and the counts that say how much a gate on it can tell."""
    out = {}
    for split, r in report.get("splits", {}).items():
        counts = r.get("cer_counts") or {}
        out[split] = {"cer": r.get("cer"), "cer_space": r.get("cer_space"), "wer": r.get("wer"),
                      "utterances": r.get("utterances"), "characters": counts.get("ref")}  # fmt: skip
    return out


def _run_manifests(run_config: dict) -> dict[str, str]:
    """The manifests a training run read (the sources it recorded; before that record, the configured paths)."""
    sources = (run_config.get("korasr") or {}).get("source_manifests")
    if sources:
        return {p: p for paths in sources.values() for p in paths}
    model = run_config.get("model", {})
    found = {}
    for key in ("train_ds", "validation_ds"):
        paths = model.get(key, {}).get("manifest_filepath")
        for path in [paths] if isinstance(paths, str) else list(paths or []):
            found[path] = path
    return found


def lineage(export_meta: dict, scored_on: list[str], parent: int | None) -> tuple[dict, Path | None]:
    """The lineage tags of a version and the training run's config file (when the source run folder has one)."""
    import yaml

    source = Path(export_meta.get("source_model") or "")
    run_yaml = source.parent / "korasr_run.yaml" if source.name else None
    run_config = {}
    if run_yaml is not None and run_yaml.is_file():
        run_config = yaml.safe_load(run_yaml.read_text(encoding="utf-8")) or {}
    manifests = {**_run_manifests(run_config), **{str(Path(m).resolve()): m for m in scored_on}}
    hashes = {p: (sha256_file(p) if Path(p).is_file() else "missing") for p in sorted(manifests)}
    info = {
        "git_commit": export_meta.get("git_commit"),
        "training_commit": (run_config.get("korasr") or {}).get("git_commit"),
        "source_model_sha256": export_meta.get("source_sha256"),
        "manifests": hashes,
        "parent_version": parent,
    }
    return info, run_yaml if run_config else None


def default_report(export_meta: dict) -> Path | None:
    """The evaluation report beside the export's source model (``korasr train --evaluate`` writes ``eval/``)."""
    source = export_meta.get("source_model")
    if not source:
        return None
    candidate = Path(source).parent / "eval" / "report.json"
    return candidate if candidate.is_file() else None


# --- operations ---------------------------------------------------------------------------------------------------


def register(export_dir: str | os.PathLike[str], name: str, *, report: str | os.PathLike[str] | None = None,
             parent: int | None = None, alias: str | None = "candidate", nemo: str | os.PathLike[str] | None = None,
             scored_on: list[str] | None = None, description: str | None = None) -> Version:  # fmt: skip
    """Make ``export_dir`` a new version of ``name`` (created if new); set ``alias`` on it. ``report`` is its
    evaluation report (default: ``eval/report.json`` beside the source ``.nemo``), ``scored_on`` the manifests that
    report scored (hashed into the lineage with the training run's own)."""
    export_dir = Path(export_dir).resolve()
    meta = read_export(export_dir)
    report_path = Path(report) if report else default_report(meta)
    report_data = json.loads(report_path.read_text(encoding="utf-8")) if report_path else None
    nemo_path = Path(nemo) if nemo else Path(meta["source_model"]) if meta.get("source_model") else None
    if nemo_path is not None and (not nemo_path.is_file() or sha256_file(nemo_path) != meta.get("source_sha256")):
        if nemo:
            raise RegistryError(
                f"{nemo_path}: not the .nemo {export_dir} was exported from (sha256 differs or missing)"
            )
        nemo_path = None  # the training folder is gone: the version carries the export only
    info, run_yaml = lineage(meta, [str(m) for m in scored_on or []], parent)
    metrics = metrics_of(report_data) if report_data else {}
    c = client()
    run = _call(f"a run for {name!r}", c.create_run, _experiment_id(c), run_name=f"register {name}",
                tags={"korasr.export": str(export_dir)})  # fmt: skip
    run_id = run.info.run_id
    try:
        c.log_artifacts(run_id, str(export_dir), "export")
        if nemo_path is not None:
            c.log_artifact(run_id, str(nemo_path), "nemo")
        if run_yaml is not None:
            c.log_artifact(run_id, str(run_yaml), "lineage")
        if report_path is not None:
            c.log_artifact(run_id, str(report_path), "evaluation")
        for split, m in metrics.items():
            for key in ("cer", "cer_space", "wer"):
                if m.get(key) is not None:
                    c.log_metric(run_id, f"{re.sub(r'[^0-9A-Za-z_.-]+', '_', split)}.{key}", float(m[key]))
        c.set_terminated(run_id)
    except Exception:
        c.set_terminated(run_id, status="FAILED")
        raise
    tags = {
        "metrics": json.dumps(metrics, ensure_ascii=False),
        "normalization": json.dumps((report_data or {}).get("meta", {}).get("normalization"), ensure_ascii=False),
        "decoder": str((report_data or {}).get("meta", {}).get("decoder") or ""),  # what scored the metrics
        "lineage": json.dumps(info, ensure_ascii=False),
        "parity": json.dumps(meta.get("parity"), ensure_ascii=False)[:4000],
        "has_nemo": str(nemo_path is not None).lower(),
        "export_sha256": json.dumps(meta.get("sha256", {}))[:4000],
    }
    _ensure_model(c, name)
    mv = _call(f"a version of {name!r}", c.create_model_version, name, source=f"runs:/{run_id}/export",
               run_id=run_id, tags=tags, description=description)  # fmt: skip
    if alias:
        set_alias(name, int(mv.version), alias)
    log.info("registered %s as %s version %s%s", export_dir, name, mv.version, f" @{alias}" if alias else "")
    return show(name, version=int(mv.version))


def _ensure_model(c, name: str) -> None:  # type: ignore[no-untyped-def]
    try:
        _call(f"registered model {name!r}", c.get_registered_model, name)
    except RegistryNotFound:
        _call(f"registered model {name!r}", c.create_registered_model, name,
              description="korasr Korean ASR exports (korasr registry)")  # fmt: skip


def _model_version(c, name: str, version: int | None = None, alias: str | None = None):  # type: ignore[no-untyped-def]
    what = f"registered model {name!r} " + (f"alias @{alias}" if alias is not None else f"version {version}")
    try:
        if alias is not None:
            return _call(what, c.get_model_version_by_alias, name, alias)
        return _call(what, c.get_model_version, name, str(version))
    except RegistryNotFound:
        raise RegistryNotFound(f"registered model {name!r} has no {what.split(' ', 3)[-1]} "
                               f"({redact(tracking_uri())})") from None  # fmt: skip


def show(name: str, *, version: int | None = None, alias: str | None = None) -> Version:
    c = client()
    return _version(c, name, _model_version(c, name, version, alias))


def list_versions(name: str) -> list[Version]:
    c = client()
    found = _call(f"versions of {name!r}", c.search_model_versions, f"name = '{name}'")
    return sorted((_version(c, name, mv) for mv in found), key=lambda v: v.version)


def history(name: str) -> list[int]:
    """The versions ``production`` has pointed at, oldest first (the last is the current one)."""
    c = client()
    tags = _call(f"registered model {name!r}", c.get_registered_model, name).tags or {}
    return [int(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]


def production(name: str) -> Version | None:
    """The version at ``production``, checked: None only when the registry answered that there is none (the model
    does not exist, or exists and ``production`` never pointed anywhere). A registry that does not answer raises
    :class:`RegistryUnavailable`; an alias that points at a deleted version, or a ``production`` that existed
    (its history says so) and is gone, raises :class:`RegistryError`: neither is "nothing in production"."""
    c = client()
    try:
        model = _call(f"registered model {name!r}", c.get_registered_model, name)
    except RegistryNotFound:
        log.info("%s: no such registered model at %s: nothing in production yet", name, redact(tracking_uri()))
        return None
    aliases = dict(model.aliases or {})
    past = [int(v) for v in json.loads((model.tags or {}).get(HISTORY_TAG, "[]"))]
    if "production" not in aliases:
        if past:
            raise RegistryError(f"{name}: @production is gone (it pointed at version {past[-1]}; the alias was removed "
                                f"or its version deleted) at {redact(tracking_uri())}: set it again (korasr registry "
                                "promote) before retraining; nothing is trained against an unknown production")  # fmt: skip
        log.info("%s: no @production alias yet at %s", name, redact(tracking_uri()))
        return None
    try:
        return _version(c, name, _model_version(c, name, int(aliases["production"])))
    except RegistryNotFound:
        raise RegistryError(f"{name}: @production points at version {aliases['production']}, which does not exist "
                            f"(deleted?) at {redact(tracking_uri())}: move the alias to a version that exists "
                            "(korasr registry promote)") from None  # fmt: skip


def set_alias(name: str, version: int, alias: str) -> None:
    """Point ``alias`` at ``version``; a move of ``production`` is appended to the model's history."""
    c = client()
    _model_version(c, name, version)
    _call(f"{name} @{alias}", c.set_registered_model_alias, name, alias, str(version))
    if alias == "production":
        past = history(name)
        if not past or past[-1] != version:
            _call(f"{name} history", c.set_registered_model_tag, name, HISTORY_TAG, json.dumps([*past, version][-200:]))
    log.info("%s @%s → version %d", name, alias, version)


def promote(name: str, version: int | None = None, alias: str = "production") -> Version:
    """Move ``alias`` (production by default) to ``version`` (default: the version ``candidate`` points at)."""
    if version is None:
        version = show(name, alias="candidate").version
    set_alias(name, version, alias)
    return show(name, version=version)


def rollback(name: str) -> Version:
    """Move ``production`` back to the version it pointed at before the last move."""
    c = client()
    past = history(name)
    if len(past) < 2:
        raise RegistryError(f"{name}: production has no earlier version to roll back to (history {past})")
    previous = past[-2]
    _call(f"{name} @production", c.set_registered_model_alias, name, "production", str(previous))
    _call(f"{name} history", c.set_registered_model_tag, name, HISTORY_TAG, json.dumps(past[:-1]))
    log.info("%s @production rolled back from version %d to %d", name, past[-1], previous)
    return show(name, version=previous)


def format_versions(versions: list[Version], production_history: list[int]) -> str:
    """A markdown table: version, aliases, CER per split (with utterances), parent, created."""
    import datetime as dt

    splits = sorted({s for v in versions for s in v.metrics})
    cer_heads = "".join(f" {s} CER |" for s in splits)
    lines = [
        f"| version | aliases |{cer_heads} parent | created (UTC) |",
        "|---:|---|" + "---:|" * len(splits) + "---:|---|",
    ]
    for v in versions:
        cells = []
        for s in splits:
            m = v.metrics.get(s) or {}
            cells.append(f"{m['cer']:.2f} ({m.get('utterances')})" if m.get("cer") is not None else "—")
        parent = json.loads(v.tags.get("lineage", "{}")).get("parent_version") or "—"
        created = dt.datetime.fromtimestamp(v.created_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")
        row = "".join(f" {c} |" for c in cells)
        lines.append(f"| {v.version} | {', '.join('@' + a for a in v.aliases)} |{row} {parent} | {created} |")
    lines.append(f"\nproduction history (oldest first): {production_history or 'none'}")
    return "\n".join(lines)


# --- models:/ references -----------------------------------------------------------------------------------------


def is_ref(value: str | os.PathLike[str] | None) -> bool:
    return isinstance(value, str) and value.startswith("models:/")


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    match = REF.fullmatch(ref)
    if not match:
        raise RegistryError(f"{ref!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    version = match["version"]
    return match["name"], match["alias"], int(version) if version else None


def resolve_version(ref: str, offline_ok: bool = False) -> Version:
    """The version ``ref`` names now. With ``offline_ok``, a registry that does not answer is met with the version
    this ref last resolved to on this machine, when its export is in the local cache (``Version.from_cache``)."""
    name, alias, version = parse_ref(ref)
    try:
        found = show(name, version=version, alias=alias)
    except RegistryUnavailable as e:
        cached = _cached_resolution(name, alias, version) if offline_ok else None
        if cached is None:
            raise
        log.warning("%s: %s; using version %d, which %s resolved to on %s, from the local cache %s", ref, e,
                    cached.version, ref, cached.tags.get("korasr.resolved_at", "?"), cache_root())  # fmt: skip
        return cached
    _remember(ref, found)
    return found


def cache_root() -> Path:
    return Path(os.environ.get("KORASR_REGISTRY_CACHE", "exp/registry-cache")).resolve()


def _ref_record(name: str, alias: str | None, version: int | None) -> Path:
    return cache_root() / name / "refs" / (f"@{alias}.json" if alias else f"v{version}.json")


def _remember(ref: str, version: Version) -> None:
    """What ``ref`` resolved to, for ``resolve_version(..., offline_ok=True)`` during an outage. Several threads,
    processes or replicas sharing the cache may write it at once, each under a name of its own (not the pid's: in
    containers every server may have the same one), so the record is always one writer's whole; a damaged record is
    written again."""
    name, alias, number = parse_ref(ref)
    record = _ref_record(name, alias, number)
    previous = _read_record(record)
    if previous and previous.get("version") == version.version and previous.get("tags") == version.tags:
        return
    data = {**version.as_dict(), "tags": version.tags, "resolved_at": _now()}
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{record.name}.", suffix=".tmp", dir=record.parent)
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)  # as any file written here: other users sharing the cache read it (not 0600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, indent=2, sort_keys=True)
                f.write("\n")
            replace_durably([(tmp, record)])
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except (OSError, ValueError) as e:  # a read-only cache still serves; the outage fallback is then unavailable
        log.warning("cannot record %s → version %d in %s: %s", ref, version.version, record, e)


def _read_record(record: Path) -> dict | None:
    """A ref's record, or None when there is none or it cannot be read (damaged: then it is as good as none)."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) and isinstance(data.get("version"), int) else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s cannot be read (%s): taken as not cached", record, e)
        return None


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _cached_resolution(name: str, alias: str | None, number: int | None) -> Version | None:
    data = _read_record(_ref_record(name, alias, number))
    if data is None:
        return None
    if not (cache_root() / name / f"v{data['version']}" / "export").is_dir():
        return None
    tags = {**data.get("tags", {}), "korasr.resolved_at": data.get("resolved_at", "")}
    return Version(data["name"], int(data["version"]), list(data.get("aliases", [])), tags, data.get("run_id"),
                   data.get("source", ""), int(data.get("created_ms", 0)), data.get("metrics", {}), from_cache=True)  # fmt: skip


FETCH_LOCK_TIMEOUT_S = 900.0


def fetch(version: Version, part: str = "export") -> Path:
    """A local copy of a version's ``export`` folder or its ``nemo`` file, cached per version.

    Safe when several threads, processes or replicas on a shared volume fetch the same version at once: one holds
    the version's lock file and downloads under a temporary name, then renames it into place; the others wait for
    the lock (at most ``FETCH_LOCK_TIMEOUT_S``) and find the copy there. Without the lock (a file system that has
    none, or the wait ran out) each downloads its own and the first rename wins; the losers use the winner's copy.
    An interrupted fetch leaves only a temporary folder, never something that looks complete."""
    if part == "nemo" and version.tags.get("has_nemo") != "true":
        raise RegistryError(f"{version.name} version {version.version} carries no .nemo (registered from an export "
                            "whose training folder was gone)")  # fmt: skip
    folder = cache_root() / version.name / f"v{version.version}"
    target = folder / part
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with _file_lock(folder / f".{part}.lock", FETCH_LOCK_TIMEOUT_S):
            if not target.exists():
                _download(version, part, folder, target)
    if part == "nemo":
        nemos = sorted(target.glob("*.nemo"))
        if len(nemos) != 1:
            raise RegistryError(f"{target}: expected one .nemo, found {len(nemos)}")
        return nemos[0]
    return target


def _download(version: Version, part: str, folder: Path, target: Path) -> None:
    import mlflow.artifacts

    staging = Path(tempfile.mkdtemp(prefix=f".{part}.", dir=folder))
    try:
        uri = version.source if part == "export" else f"runs:/{version.run_id}/nemo"
        got = Path(_call(f"{version.name} version {version.version} ({part})", mlflow.artifacts.download_artifacts,
                         artifact_uri=uri, dst_path=str(staging), tracking_uri=tracking_uri()))  # fmt: skip
        try:
            rename_tree_durably(got, target)  # a directory onto a missing name: atomic; onto an existing one: fails
        except OSError:
            if not target.exists():
                raise
            log.info("%s was fetched by another process meanwhile: using its copy", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class _file_lock:
    """An exclusive ``flock`` on ``path``, waited for at most ``timeout_s`` (then the caller goes on unlocked: the
    rename in ``_download`` keeps the result correct, only a download may be repeated)."""

    def __init__(self, path: Path, timeout_s: float):
        self.path, self.timeout_s, self.fd = path, timeout_s, None

    def __enter__(self):  # type: ignore[no-untyped-def]
        import fcntl
        import time

        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            log.warning("no lock file %s (%s): fetching without it", self.path, e)
            return self
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning("%s held for over %.0f s: fetching without it", self.path, self.timeout_s)
                    return self
                time.sleep(0.1)
            except OSError as e:  # a file system without flock
                log.warning("cannot lock %s (%s): fetching without it", self.path, e)
                return self

    def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
        if self.fd is not None:
            os.close(self.fd)  # releases the flock


def resolve(ref: str | os.PathLike[str], part: str = "export", offline_ok: bool = False) -> Path:
    """A model path as the CLI takes it: ``models:/…`` becomes the local copy of that version; a path stays. With
    ``offline_ok`` a registry outage falls back to the version this ref last resolved to (see ``resolve_version``)."""
    if not is_ref(ref):
        return Path(ref)
    version = resolve_version(str(ref), offline_ok=offline_ok)
    if version.from_cache:
        path = cache_root() / version.name / f"v{version.version}" / part
        if part == "nemo":
            nemos = sorted(path.glob("*.nemo"))
            if len(nemos) != 1:
                raise RegistryUnavailable(f"{ref}: the registry does not answer and {path} holds no .nemo")
            return nemos[0]
        if not path.is_dir():
            raise RegistryUnavailable(f"{ref}: the registry does not answer and {path} is not in the local cache")
        return path
    path = fetch(version, part)
    log.info("%s → %s version %d (%s)", ref, version.name, version.version, path)
    return path
