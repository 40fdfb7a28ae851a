"""The service follows the registry: ``korasr serve --model models:/NAME@production --follow 60``.

Every ``follow_s`` seconds the alias is read; when it names another version, that version's export is fetched (the
registry's local cache), loaded and warmed beside the serving model, then swapped in (``ServiceState.swap``):
requests and streams admitted before finish on the old model, new ones go to the new, and the old one is released
when its last holder is done. A version that fails to fetch, load or warm up is not swapped in; the service logs
it, counts it (``korasr_model_reloads{outcome="failed"}``), shows it in ``/health`` and keeps serving, and tries that
version again only when the alias moves again (or on ``POST /admin/reload``).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from korasr.serve.config import ServeConfig

log = logging.getLogger(__name__)


def registered_version(config: ServeConfig) -> dict:
    """What the registry says of the version ``config.model_ref`` names now: name, version, metrics."""
    from korasr import registry

    v = registry.resolve_version(str(config.model_ref))
    return {"name": v.name, "version": v.version, "metrics": v.metrics, "ref": config.model_ref}


def pinned(config: ServeConfig) -> tuple[dict, Path]:
    """The version the alias names now and the local copy of its export (fetched once per version)."""
    from korasr import registry

    wanted = registered_version(config)
    version = registry.resolve_version(f"models:/{wanted['name']}/{wanted['version']}")
    return wanted, registry.fetch(version)


async def reload(state, force: bool = False) -> dict:  # type: ignore[no-untyped-def]
    """Read the alias; swap when it moved (or always, with ``force``). Returns what happened."""
    from korasr import registry

    config = state.config
    if not config.model_ref:
        raise ValueError("this service serves a folder, not a registry alias: nothing to reload")
    serving = state.current.version.get("version")
    try:
        wanted = await asyncio.to_thread(registered_version, config)
        if wanted["version"] == serving and not force:
            return {"swapped": False, "version": serving, "reason": "the alias has not moved"}
        version = await asyncio.to_thread(registry.resolve_version, f"models:/{wanted['name']}/{wanted['version']}")
        path = await asyncio.to_thread(registry.fetch, version)
        await state.swap(path, wanted)  # loads and warms up beside the serving model, then swaps
    except Exception as e:  # the registry unreachable, a version that does not load or warm up
        state.reload_error = f"{type(e).__name__}: {e}"[:500]
        state.metrics.reloads.labels("failed").inc()
        log.error("reload from %s failed; still serving version %s: %s", config.model_ref, serving, e)
        raise
    return {"swapped": True, "version": wanted["version"], "previous": serving}


async def follow(state) -> None:  # type: ignore[no-untyped-def]
    """The follower task: reload whenever the alias moves; a failure is reported, never fatal."""
    failed_version = None
    while True:
        await asyncio.sleep(state.config.follow_s)
        wanted = None
        try:
            wanted = await asyncio.to_thread(registered_version, state.config)
            if wanted["version"] in (state.current.version.get("version"), failed_version):
                continue
            await reload(state)
            failed_version = None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # reported by reload (log, metric, /health); the registry unreachable: the same
            if wanted is None:
                state.reload_error = f"{type(e).__name__}: {e}"[:500]
                log.error("following %s: %s", state.config.model_ref, e)
            failed_version = wanted["version"] if wanted else None
