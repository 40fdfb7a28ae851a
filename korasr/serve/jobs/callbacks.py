"""Completion callbacks: a job's result (or error) POSTed as JSON to its ``callback_url``, signed as the Standard
Webhooks specification says (https://www.standardwebhooks.com), so a receiver in any language checks it with the
specification's libraries (PyPI ``standardwebhooks`` or ``svix``, npm ``standardwebhooks`` …) and knows it came from
this deployment, unchanged and fresh::

    from standardwebhooks import Webhook

    Webhook("whsec_…").verify(raw_body, request.headers)   # raises WebhookVerificationError: answer 400, drop it

Headers: ``webhook-id`` (:func:`message_id`: the same on every attempt of one job's callback, whichever process
sends it, so a receiver keeps one per id), ``webhook-timestamp`` (unix seconds of the attempt) and
``webhook-signature``: ``v1,BASE64`` with BASE64 the HMAC-SHA256 of ``f"{id}.{timestamp}.{body}"``, one per secret,
space-separated. The deployment's ``callback_secret`` (``KORASR_CALLBACK_SECRET``) holds one secret or several
separated by spaces (:func:`parse_secrets`): each signs every callback, so receivers move from one to the next without
losing one. A secret is ``whsec_BASE64`` (the specification's form: the key is the decoded bytes) or, as deployments
before the specification had it, a plain string of at least 16 characters whose UTF-8 bytes are the key (a receiver
passes those bytes, ``Webhook(secret.encode())``, or the same key as ``"whsec_" + base64(secret)``).

For one release the old headers come too, so receivers written for them keep working while they move:
``X-Korasr-Timestamp`` (the same seconds), ``X-Korasr-Signature: sha256=HEX`` (HMAC-SHA256 of ``f"{timestamp}.{body}"``
under the first secret; :func:`verify_signature` checks it) and ``X-Korasr-Delivery`` (the job's id).

Delivery: the target is checked against the allow-list and its address (``net.resolve``) before every attempt;
each attempt has one deadline for all of it (connect, send, the answer's headers), so a receiver that trickles its
answer cannot stretch it; redirects are not followed; 5xx, 408, 429, network errors and a missed deadline are retried
as ``korasr/retry.py`` says (exponential back-off with full jitter, ``Retry-After`` honoured on 429 and 503) up to
``attempts`` tries, all within :func:`longest_delivery_s` (a retry that could not end by then is not made: the reason
says so); any other answer ends it. The worker claims a callback in the database before sending it, so one process
sends it, whatever the number of workers, and a restart sends only those not delivered."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import time

from korasr.retry import Backoff, retried, retry_after_s
from korasr.serve.jobs.net import Refused, resolve

log = logging.getLogger(__name__)

ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "webhook-id", "webhook-timestamp", "webhook-signature"
# the headers before the specification, sent beside its own for this release only (docs/service.md, "Migration")
LEGACY_TIMESTAMP_HEADER, LEGACY_SIGNATURE_HEADER = "X-Korasr-Timestamp", "X-Korasr-Signature"
LEGACY_DELIVERY_HEADER = "X-Korasr-Delivery"
SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 16  # 128 bits, whichever form a secret has
MAX_SECRET_CHARS = 1024
MAX_SECRETS = 8  # each signs every callback: a rotation needs two
DEADLINE_S = 600.0  # one callback's deliveries, back-off included, end within this
MAX_BACKOFF_S = 60.0


def parse_secrets(value: str) -> list[bytes]:
    """The HMAC keys in ``callback_secret``: secrets separated by spaces, each ``whsec_BASE64`` (the key is the decoded
    bytes, at least 16) or a plain string of at least 16 characters (the key is its UTF-8 bytes). ValueError names
    the secret by its position and says why (the caller names the setting); it never quotes a secret."""
    if len(value) > MAX_SECRETS * (MAX_SECRET_CHARS + 1):
        raise ValueError(f"{len(value)} characters, at most {MAX_SECRETS} secrets of {MAX_SECRET_CHARS}")
    secrets = value.split()
    if not secrets:
        raise ValueError("empty: one secret, or several separated by spaces")
    if len(secrets) > MAX_SECRETS:
        raise ValueError(f"{len(secrets)} secrets, at most {MAX_SECRETS} (separated by spaces)")
    keys = []
    for position, secret in enumerate(secrets, 1):
        where = f"secret {position} of {len(secrets)}"
        if len(secret) > MAX_SECRET_CHARS:
            raise ValueError(f"{where}: {len(secret)} characters, at most {MAX_SECRET_CHARS}")
        if secret.startswith(SECRET_PREFIX):
            encoded = secret[len(SECRET_PREFIX) :].rstrip("=")
            try:
                key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{where}: starts with {SECRET_PREFIX} but the rest is not base64") from None
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"{where}: a {SECRET_PREFIX} secret of {len(key)} bytes, at least {MIN_KEY_BYTES} "
                                 "(openssl rand -base64 32)")  # fmt: skip
        else:
            if len(secret) < MIN_KEY_BYTES:
                raise ValueError(f"{where}: {len(secret)} characters, a plain secret needs at least {MIN_KEY_BYTES} "
                                 f"(or {SECRET_PREFIX}<base64 of 16 to 64 random bytes>)")  # fmt: skip
            key = secret.encode()
        keys.append(key)
    return keys


def message_id(job: dict) -> str:
    """``webhook-id`` of a job's callback: its id and final status, so every attempt and every process sending it
    give the same id, and another event of the job would have its own."""
    return f"job_{job['id']}_{job['status']}"


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,BASE64``: HMAC-SHA256 of ``f"{msg_id}.{timestamp}.{body}"`` under ``key`` (the specification's scheme)."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(keys: list[bytes], msg_id: str, timestamp: int, body: bytes, *, job_id: str) -> dict[str, str]:
    """The headers that sign ``body``: the specification's (a signature per key) and, for one release, the old ones
    (under the first key)."""
    return {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: " ".join(sign(key, msg_id, timestamp, body) for key in keys),
            LEGACY_TIMESTAMP_HEADER: str(timestamp), LEGACY_SIGNATURE_HEADER: legacy_sign(keys[0], timestamp, body),
            LEGACY_DELIVERY_HEADER: job_id}  # fmt: skip


def legacy_sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """``sha256=HEX``: HMAC-SHA256 of ``f"{timestamp}.{body}"`` (``X-Korasr-Signature``, sent for this release only)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(secret: str | bytes, timestamp: str | int, body: bytes, header: str, tolerance_s: float = 300,
                     now: float | None = None) -> bool:  # fmt: skip
    """The old check, for receivers not yet on the specification (this release only): ``header``
    (``X-Korasr-Signature``) is the signature of the exact ``body`` bytes received with ``timestamp``
    (``X-Korasr-Timestamp``) under ``secret`` (a plain secret as configured), and that timestamp is within
    ``tolerance_s`` of ``now`` (default: the clock), so a recorded callback cannot be replayed later. Compared in
    constant time."""
    try:
        sent = int(str(timestamp))
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(legacy_sign(secret, sent, body).encode(), str(header).strip().encode())


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
    """The longest :func:`deliver` can take: every attempt to its deadline with the longest back-off between them,
    and never past ``DEADLINE_S``. A Retry-After that asks for more is honoured only while the retry still ends within
    this: :func:`deliver` gives up rather than pass it."""
    return min(DEADLINE_S, attempts * timeout_s + Backoff(backoff_s, MAX_BACKOFF_S).longest_waits_s(attempts))


async def deliver(url: str, body: bytes, *, allow: tuple[str, ...], keys: list[bytes], attempts: int,
                  timeout_s: float, msg_id: str, job_id: str, backoff_s: float = 1.0) -> str:  # fmt: skip
    """POST ``body`` to ``url`` until it is taken (2xx: ''), or the reason it never was; each attempt within
    ``timeout_s`` in all, signed with every key, each with the id ``msg_id``; all within :func:`longest_delivery_s`."""
    import httpx

    backoff, budget = Backoff(backoff_s, MAX_BACKOFF_S), longest_delivery_s(attempts, timeout_s, backoff_s)
    started, reason = time.monotonic(), "not attempted"
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        for attempt in range(1, attempts + 1):
            asked = None
            try:
                async with asyncio.timeout(timeout_s):
                    status, retry_after = await post(client, url, body, allow, keys, msg_id, job_id)
            except Refused as e:
                return e.reason
            except TimeoutError:
                reason = f"no answer within {timeout_s:g} s"
            except httpx.HTTPError as e:
                reason = f"{type(e).__name__}: {e}"[:300]
            else:
                if 200 <= status < 300:
                    return ""
                reason = f"the receiver answered {status}"
                if not retried(status):
                    return reason + (" (redirects are not followed)" if 300 <= status < 400 else "")
                asked = retry_after_s(status, retry_after)
            if attempt == attempts:
                break  # no wait after the last try
            wait = backoff.wait_s(attempt, asked)
            if time.monotonic() - started + wait + timeout_s > budget:
                why = f"Retry-After {asked:g} s" if asked is not None else f"a back-off of {wait:.1f} s"
                return (f"{reason}; gave up after {attempt} of {attempts} attempts: with {why}, another try would "
                        f"end past {budget:g} s, the bound of one callback's delivery")  # fmt: skip
            await asyncio.sleep(wait)
    return f"{reason}, {attempts} attempts"


async def post(client, url: str, body: bytes, allow: tuple[str, ...], keys: list[bytes],  # type: ignore[no-untyped-def]
               msg_id: str, job_id: str) -> tuple[int, str | None]:  # fmt: skip
    """One signed POST to the checked address of ``url``: the answer's status and its Retry-After header."""
    target = await resolve(url, allow, "callback_url", "--callback-allow")
    pinned, headers, extensions = target.request()
    headers |= {"Content-Type": "application/json", "User-Agent": "korasr",
                **signature_headers(keys, msg_id, int(time.time()), body, job_id=job_id)}  # fmt: skip
    async with client.stream("POST", pinned, content=body, headers=headers, extensions=extensions) as response:
        # the answer's body is never read: its size is the receiver's to choose
        return response.status_code, response.headers.get("Retry-After")
