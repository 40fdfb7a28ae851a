"""The service follows the registry: ``korasr serve --model models:/NAME@production --follow 60``.

Every ``follow_s`` seconds the alias is read; when it names another version, that version's export is fetched (the
registry's local cache, safe when several workers fetch one version at once), loaded and warmed beside the serving
model, then swapped in (``ServiceState.swap``): requests and streams admitted before finish on the old model, new ones
go to the new, and the old one is released when its last holder is done. One reload runs at a time per process (the
follower's or ``POST /admin/reload``'s; another meanwhile gets 409).

Faults, each said in ``GET /admin/status`` (``follow``) and in the metrics, none fatal:

- a version that fails to fetch, load or warm up is not swapped in; the service keeps serving and tries it again
  after ``follow_s`` × 2, 4, 8 … (at most ``MAX_RETRY_S``) until it loads or the alias moves
  (``korasr_model_reloads{outcome="failed"}``, ``reload_error``); ``korasr_registry_behind_seconds`` says how long
  the alias has named a version not served (0 once it is);
- a registry that does not answer keeps the serving model serving (``korasr_registry_reachable`` 0,
  ``korasr_registry_follow_errors``); following resumes when it answers again;
- at start, a registry that does not answer is met with the version the alias last resolved to on this machine, from
  the local cache, with a warning (``registry.resolve_version(..., offline_ok=True)``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from korasr.errors import without_credentials
from korasr.serve.config import ServeConfig

log = logging.getLogger(__name__)

MAX_RETRY_S = 600.0  # a version that failed to load is tried again at most this far apart


class ReloadBusy(Exception):
    """A reload is already running in this process."""


def described(v) -> dict:  # type: ignore[no-untyped-def]
    """What the service keeps of a registry version: name, version, metrics, and whether it came from the cache."""
    return {"name": v.name, "version": v.version, "metrics": v.metrics, "from_cache": v.from_cache}


def registered_version(config: ServeConfig, offline_ok: bool = False) -> dict:
    """What the registry says of the version ``config.model_ref`` names now: name, version, metrics."""
    from korasr import registry

    return {**described(registry.resolve_version(str(config.model_ref), offline_ok=offline_ok)),
            "ref": config.model_ref}  # fmt: skip


def pinned(config: ServeConfig) -> tuple[dict, Path]:
    """The version the alias names now and the local copy of its export (fetched once per version); when the registry
    does not answer, the version it last named here, from the local cache."""
    from korasr import registry

    wanted = registered_version(config, offline_ok=True)
    if wanted["from_cache"]:
        return wanted, registry.cache_root() / wanted["name"] / f"v{wanted['version']}" / "export"
    version = registry.resolve_version(f"models:/{wanted['name']}/{wanted['version']}")
    return wanted, registry.fetch(version)


def error_text(e: BaseException) -> str:
    return without_credentials(f"{type(e).__name__}: {e}")[:500]


async def reload(state, force: bool = False) -> dict:  # type: ignore[no-untyped-def]
    """Read the alias; swap when it moved (or always, with ``force``). Returns what happened; :class:`ReloadBusy`
    while another reload runs."""
    from korasr import registry

    config = state.config
    if not config.model_ref:
        raise ValueError("this service serves a folder, not a registry alias: nothing to reload")
    if state.reloading.locked():
        raise ReloadBusy("a reload is in progress in this process: retry when it has finished")
    async with state.reloading:
        serving = state.current.version.get("version")
        try:
            wanted = await asyncio.to_thread(registered_version, config)
            if wanted["version"] == serving and not force:
                return {"swapped": False, "version": serving, "reason": "the alias has not moved"}
            ref = f"models:/{wanted['name']}/{wanted['version']}"
            path = await asyncio.to_thread(lambda: registry.fetch(registry.resolve_version(ref)))
            await state.swap(path, wanted)  # loads and warms up beside the serving model, then swaps
        except Exception as e:  # the registry unreachable, a version that does not load or warm up
            state.reload_error = error_text(e)
            state.metrics.reloads.labels("failed").inc()
            log.error("reload from %s failed; still serving version %s: %s", config.model_ref, serving,
                      state.reload_error)  # fmt: skip
            raise
    return {"swapped": True, "version": wanted["version"], "previous": serving}


async def follow(state) -> None:  # type: ignore[no-untyped-def]
    """The follower task: reload whenever the alias moves; a failure is reported and retried, never fatal."""
    from korasr.registry import RegistryError, RegistryUnavailable

    status, metrics, every = state.follow, state.metrics, state.config.follow_s
    retry: dict | None = None  # the version that failed to load: {version, attempts, at (monotonic)}
    behind_since: float | None = None  # when the alias was first seen naming a version not served (monotonic)
    while True:
        await asyncio.sleep(every)
        # as last seen: while the registry does not answer, a service that was behind is still counted behind
        metrics.registry_behind.set(0 if behind_since is None else time.monotonic() - behind_since)
        try:
            wanted = await asyncio.to_thread(registered_version, state.config)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the registry unreachable (or an alias that names nothing): keep serving
            metrics.follow_errors.inc()
            unreachable = isinstance(e, RegistryUnavailable) or not isinstance(e, RegistryError)
            if unreachable:
                metrics.registry_reachable.set(0)
            if status.get("error") is None:
                log.error("following %s: %s; still serving version %s", state.config.model_ref, error_text(e),
                          state.current.version.get("version"))  # fmt: skip
            status.update(reachable=not unreachable, error=error_text(e), failing_since=status.get("failing_since")
                          or time.time())  # fmt: skip
            continue
        if status.get("error"):
            log.info("following %s: the registry answers again", state.config.model_ref)
        metrics.registry_reachable.set(1)
        status.update(reachable=True, error=None, failing_since=None, checked_at=time.time(), alias_names=wanted[
            "version"])  # fmt: skip
        if wanted["version"] == state.current.version.get("version"):
            state.current.version.update(metrics=wanted["metrics"], from_cache=False)  # confirmed, if started offline
            retry = status["retrying"] = behind_since = None
            metrics.registry_behind.set(0)
            continue
        behind_since = behind_since or time.monotonic()
        metrics.registry_behind.set(time.monotonic() - behind_since)
        if retry and retry["version"] == wanted["version"] and time.monotonic() < retry["at"]:
            continue
        try:
            await reload(state)
            retry = status["retrying"] = behind_since = None
            metrics.registry_behind.set(0)
        except asyncio.CancelledError:
            raise
        except ReloadBusy:
            continue
        except Exception:  # reported by reload (log, metric, reload_error): tried again with back-off
            attempts = retry["attempts"] + 1 if retry and retry["version"] == wanted["version"] else 1
            delay = min(every * 2**attempts, MAX_RETRY_S)
            retry = {"version": wanted["version"], "attempts": attempts, "at": time.monotonic() + delay}
            status["retrying"] = {"version": wanted["version"], "attempts": attempts, "next_in_s": round(delay, 1)}
