"""Completion callbacks: a job's result (or error) POSTed as JSON to its ``callback_url``, signed the way Stripe and
Slack sign theirs, so the receiver knows it came from this deployment and is not a replay.

Headers: ``X-Korasr-Timestamp`` (unix seconds) and ``X-Korasr-Signature: sha256=HEX``, HEX being the HMAC-SHA256 of
``f"{timestamp}.{body}"`` under the deployment's secret (``KORASR_CALLBACK_SECRET``). A receiver checks it with
:func:`verify_signature` (standard library only: a receiver without korasr can copy it)::

    from korasr.serve.jobs.callbacks import verify_signature

    ok = verify_signature(secret, request.headers["X-Korasr-Timestamp"], raw_body,
                          request.headers["X-Korasr-Signature"])   # False: answer 400 and ignore the body

Delivery: the target is checked against the allow-list and its address (``net.resolve``) before every attempt;
each attempt has one deadline for all of it (connect, send, the answer's headers), so a receiver that trickles its
answer cannot stretch it; redirects are not followed; 5xx, 408, 429, network errors and a missed deadline are retried
with exponential back-off (1, 2, 4 … s) up to ``attempts`` tries and ``DEADLINE_S`` in all; any other answer ends it.
Every attempt of one callback carries the same ``X-Korasr-Delivery`` id (the job's): a receiver that sees it twice
(the answer to the first attempt was lost) keeps one. The worker claims a callback in the database before sending
it, so one process sends it, whatever the number of workers, and a restart sends only those not delivered."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time

from korasr.serve.jobs.net import Refused, resolve

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Korasr-Timestamp"
SIGNATURE_HEADER = "X-Korasr-Signature"
DELIVERY_HEADER = "X-Korasr-Delivery"
DEADLINE_S = 600.0  # one callback's deliveries, back-off included, end within this
MAX_BACKOFF_S = 60.0
RETRIED = frozenset({408, 429})


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """``sha256=HEX``: HMAC-SHA256 of ``f"{timestamp}.{body}"`` under ``secret``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, timestamp: str | int, body: bytes, header: str, tolerance_s: float = 300,
                     now: float | None = None) -> bool:  # fmt: skip
    """Whether a callback is authentic and fresh: ``header`` (``X-Korasr-Signature``) is the signature of the exact
    ``body`` bytes received with ``timestamp`` (``X-Korasr-Timestamp``), and that timestamp is within
    ``tolerance_s`` of ``now`` (default: the clock), so a recorded callback cannot be replayed later. Compared in
    constant time."""
    try:
        sent = int(str(timestamp))
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, sent, body).encode(), str(header).strip().encode())


def payload(job: dict, result: object) -> bytes:
    """The callback's body: the job's id, status, format and times, and its ``result`` or ``error``."""
    body = {"id": job["id"], "status": job["status"], "response_format": job["response_format"],
            "attempts": job["attempts"], "created_at": job["created_at"], "finished_at": job["finished_at"]}  # fmt: skip
    if job.get("model"):
        body["model"] = json.loads(job["model"])
    if job["status"] == "succeeded":
        body["result"] = result
    else:
        body["error"] = job["error"]
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def longest_delivery_s(attempts: int, timeout_s: float, backoff_s: float = 1.0) -> float:
    """The longest :func:`deliver` can take: every attempt to its deadline with the back-off between them, and never
    past ``DEADLINE_S``."""
    waits = sum(min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S) for attempt in range(1, attempts))
    return min(DEADLINE_S, attempts * timeout_s + waits)


async def deliver(url: str, body: bytes, *, allow: tuple[str, ...], secret: str, attempts: int, timeout_s: float,
                  delivery: str, backoff_s: float = 1.0) -> str:  # fmt: skip
    """POST ``body`` to ``url`` until it is taken (2xx: ''), or the reason it never was; each attempt within
    ``timeout_s`` in all, each with the id ``delivery``."""
    import httpx

    started, reason = time.monotonic(), "not attempted"
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        for attempt in range(attempts):
            if attempt:
                wait = min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                if time.monotonic() - started + wait + timeout_s > DEADLINE_S:
                    return f"{reason}; gave up after {attempt} attempts ({DEADLINE_S:g} s in all)"
                await asyncio.sleep(wait)
            try:
                async with asyncio.timeout(timeout_s):
                    status = await post(client, url, body, allow, secret, delivery)
            except Refused as e:
                return e.reason
            except TimeoutError:
                reason = f"no answer within {timeout_s:g} s"
                continue
            except httpx.HTTPError as e:
                reason = f"{type(e).__name__}: {e}"[:300]
                continue
            if 200 <= status < 300:
                return ""
            reason = f"the receiver answered {status}"
            if status < 500 and status not in RETRIED:
                return reason + (" (redirects are not followed)" if 300 <= status < 400 else "")
    return f"{reason}, {attempts} attempts"


async def post(client, url: str, body: bytes, allow: tuple[str, ...], secret: str, delivery: str) -> int:  # type: ignore[no-untyped-def]
    """One signed POST to the checked address of ``url``: the answer's status."""
    target = await resolve(url, allow, "callback_url", "--callback-allow")
    pinned, headers, extensions = target.request()
    timestamp = int(time.time())
    headers |= {"Content-Type": "application/json", "User-Agent": "korasr", TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(secret, timestamp, body), DELIVERY_HEADER: delivery}  # fmt: skip
    async with client.stream("POST", pinned, content=body, headers=headers, extensions=extensions) as response:
        return response.status_code  # the answer's body is never read: its size is the receiver's to choose
