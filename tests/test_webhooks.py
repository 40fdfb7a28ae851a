"""Job callbacks in the Standard Webhooks format, checked by the specification's own library (``standardwebhooks``)
on a real HTTP receiver on loopback: both forms of secret, rotation with two, a tampered body, an old timestamp, a
bad secret named by its position; and the retry rule (``korasr/retry.py``) of the callbacks and of the retraining's
webhook: jittered (8 callbacks failing together come back apart), Retry-After honoured on 429 and 503, no retry on
another 4xx, no wait after the last try, and never past ``longest_delivery_s``."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import secrets
import statistics
import time
from email.utils import formatdate

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from korasr.retry import Backoff, retried, retry_after_s
from korasr.serve.jobs.callbacks import (
    deliver,
    longest_delivery_s,
    message_id,
    parse_secrets,
    payload,
    signature_headers,
)
from tests.test_jobs import Receiver

PLAIN = secrets.token_hex(16)  # a secret as deployments before the specification have it
WHSEC_A, WHSEC_B = ("whsec_" + base64.b64encode(secrets.token_bytes(24)).decode() for _ in range(2))
JOB = {"id": secrets.token_hex(16), "status": "succeeded", "response_format": "json", "attempts": 1,
       "created_at": 1.0, "finished_at": 2.0, "model": None}  # fmt: skip
BODY = payload(JOB, {"text": "안녕하세요"})


def send(receiver: Receiver, secret: str, attempts: int = 1, timeout_s: float = 5.0, backoff_s: float = 1.0) -> str:
    return asyncio.run(deliver(receiver.url, BODY, allow=(f"http://127.0.0.1:{receiver.port}/",),
                               keys=parse_secrets(secret), attempts=attempts, timeout_s=timeout_s,
                               msg_id=message_id(JOB), job_id=JOB["id"], backoff_s=backoff_s))  # fmt: skip


@pytest.fixture
def receiver():  # type: ignore[no-untyped-def]
    receiver = Receiver()
    yield receiver
    receiver.close()


# --- the format -----------------------------------------------------------------------------------------------------


def test_a_standard_webhooks_receiver_verifies_the_callbacks_and_refuses_tampering(receiver):
    assert send(receiver, WHSEC_A) == ""
    ((headers, body, _),) = receiver.received
    assert Webhook(WHSEC_A).verify(body, headers) == json.loads(BODY)
    assert headers["webhook-id"] == f"job_{JOB['id']}_succeeded" == message_id(JOB)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(WHSEC_A).verify(body.replace("안녕".encode(), "잘가".encode()), headers)  # a tampered body
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(WHSEC_B).verify(body, headers)  # another deployment's secret
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(WHSEC_A).verify(body, headers | {"webhook-id": f"job_{JOB['id']}_failed"})  # the id is signed too


def test_an_old_timestamp_is_refused_however_well_signed():
    keys = parse_secrets(WHSEC_A)
    old = signature_headers(keys, message_id(JOB), int(time.time()) - 3600, BODY, job_id=JOB["id"])
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(WHSEC_A).verify(BODY, old)
    fresh = signature_headers(keys, message_id(JOB), int(time.time()), BODY, job_id=JOB["id"])
    assert Webhook(WHSEC_A).verify(BODY, fresh) == json.loads(BODY)


def test_a_plain_secret_is_its_utf8_bytes_for_receivers(receiver):
    """An existing deployment's secret keeps working: a receiver passes its bytes, or the same key as whsec_."""
    assert send(receiver, PLAIN) == ""
    ((headers, body, _),) = receiver.received
    assert Webhook(PLAIN.encode()).verify(body, headers)["id"] == JOB["id"]
    assert Webhook("whsec_" + base64.b64encode(PLAIN.encode()).decode()).verify(body, headers)["id"] == JOB["id"]
    with pytest.raises(WebhookVerificationError):
        Webhook(PLAIN).verify(body, headers)  # a str that is not whsec_ is read as base64: another key


def test_two_secrets_sign_every_callback_so_receivers_rotate_without_a_gap(receiver):
    assert send(receiver, f"{WHSEC_A} {PLAIN}") == ""
    ((headers, body, _),) = receiver.received
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(WHSEC_A).verify(body, headers)["id"] == JOB["id"]  # a receiver still on the old secret
    assert Webhook(PLAIN.encode()).verify(body, headers)["id"] == JOB["id"]  # one already on the new
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC_B).verify(body, headers)


def test_secrets_are_parsed_or_refused_by_position_without_quoting_them():
    assert parse_secrets(WHSEC_A) == [base64.b64decode(WHSEC_A[6:])]
    assert parse_secrets(f" {PLAIN}\n{WHSEC_B} ") == [PLAIN.encode(), base64.b64decode(WHSEC_B[6:])]
    assert parse_secrets(WHSEC_A.rstrip("=")) == parse_secrets(WHSEC_A)  # the padding is optional
    assert parse_secrets("비밀번호는열여섯글자를넘어야합니다") == ["비밀번호는열여섯글자를넘어야합니다".encode()]
    short_plain, short_whsec = "short-secret", "whsec_" + base64.b64encode(b"15 bytes only!!").decode()
    for value, reason in [("", "empty"), ("   ", "empty"),
                          (f"{PLAIN} {short_plain}", "secret 2 of 2: 12 characters, a plain secret needs at least 16"),
                          (f"whsec_not*base64{PLAIN} {PLAIN}", "secret 1 of 2: starts with whsec_ but the rest is not"),
                          (f"{PLAIN} {PLAIN} {short_whsec}", "secret 3 of 3: a whsec_ secret of 15 bytes, at least 16"),
                          ("x" * 1025, "secret 1 of 1: 1025 characters, at most 1024"),
                          (" ".join([PLAIN] * 9), "9 secrets, at most 8"),
                          ("x" * 10**6, "1000000 characters, at most 8 secrets of 1024")]:  # fmt: skip
        with pytest.raises(ValueError, match=reason) as raised:
            parse_secrets(value)
        assert PLAIN not in str(raised.value) and short_plain not in str(raised.value)


# --- retries --------------------------------------------------------------------------------------------------------


def test_eight_callbacks_failing_together_do_not_retry_in_lockstep():
    """8 callbacks to a receiver that answers 503 (no Retry-After) three times each: each retry is drawn from the
    whole back-off interval, so the second tries, which plain exponential back-off sends together 1 s after the
    first, come spread over it."""
    receiver = Receiver(then=503)

    async def together() -> list[str]:
        allow = (f"http://127.0.0.1:{receiver.port}/",)
        return await asyncio.gather(*(deliver(receiver.url, BODY, allow=allow, keys=parse_secrets(PLAIN), attempts=3,
                                              timeout_s=5.0, msg_id=f"job_{i}_failed", job_id=str(i), backoff_s=1.0)
                                      for i in range(8)))  # fmt: skip

    try:
        outcomes = asyncio.run(together())
    finally:
        receiver.close()
    assert outcomes == ["the receiver answered 503, 3 attempts"] * 8
    by_id: dict[str, list[float]] = {}
    for headers, _, at in receiver.received:
        by_id.setdefault(headers["webhook-id"], []).append(at)
    assert sorted(by_id) == [f"job_{i}_failed" for i in range(8)] and {len(t) for t in by_id.values()} == {3}
    # each wait as a share of its interval (1 s, then 2 s). In lockstep every callback waits all of it (a share of 1
    # or more, however loaded the machine); drawn from it, the shares spread over 0 to 1 (a standard deviation of
    # 0.29) and three in four fall under 0.75: fewer than 4 of 16 about once in 250,000 runs
    shares = [(t[1] - t[0]) / 1 for t in by_id.values()] + [(t[2] - t[1]) / 2 for t in by_id.values()]
    assert statistics.pstdev(shares) > 0.1 and sum(share < 0.75 for share in shares) >= 4, shares


def test_retry_after_is_honoured_on_429_and_503(receiver):
    """As seconds, and as an HTTP date (whole seconds: 4 s ahead when set, 3 or more when the first try is answered)."""
    receiver.answers = [(503, {"Retry-After": formatdate(time.time() + 4, usegmt=True)}), (429, {"Retry-After": "1"})]
    assert send(receiver, PLAIN, attempts=3, timeout_s=10.0) == ""
    times = [at for _, _, at in receiver.received]
    assert len(times) == 3 and times[1] - times[0] >= 2 and times[2] - times[1] >= 1


def test_no_retry_on_another_4xx_but_408_and_429_are_retried(receiver):
    receiver.answers = [404]
    assert send(receiver, PLAIN, attempts=5) == "the receiver answered 404"
    assert len(receiver.received) == 1
    receiver.answers, receiver.received[:] = [408, 429], []
    assert send(receiver, PLAIN, attempts=5, backoff_s=0.1) == ""
    assert len(receiver.received) == 3


def test_no_wait_after_the_last_try_and_none_past_the_deadline(receiver):
    """The last try's Retry-After is not waited for; a Retry-After that would carry a retry past the delivery's bound
    (longest_delivery_s, which the callback's claim is held for) ends the delivery at once, saying why."""
    receiver.answers = [(503, {"Retry-After": "1"}), (503, {"Retry-After": "30"})]
    started = time.monotonic()
    assert send(receiver, PLAIN, attempts=2, timeout_s=20) == "the receiver answered 503, 2 attempts"
    assert time.monotonic() - started < 30 and len(receiver.received) == 2
    receiver.answers, receiver.received[:] = [(503, {"Retry-After": "30"})], []
    assert longest_delivery_s(3, 5.0) == 18  # 3 tries of 5 s, 1 + 2 s of back-off
    reason = send(receiver, PLAIN, attempts=3, timeout_s=5.0)
    assert reason == ("the receiver answered 503; gave up after 1 of 3 attempts: with Retry-After 30 s, another try "
                      "would end past 18 s, the bound of one callback's delivery")  # fmt: skip
    assert len(receiver.received) == 1


def test_the_back_off_rule():
    rule, rng = Backoff(base_s=1.0, cap_s=60.0), random.Random(0)
    assert [rule.ceiling_s(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert rule.longest_waits_s(5) == 15 and longest_delivery_s(5, 10.0) == 65  # the defaults: claims held 75 s
    for n in range(1, 9):
        waits = [rule.wait_s(n, rng=rng) for _ in range(200)]
        assert 0 <= min(waits) < rule.ceiling_s(n) / 4 and rule.ceiling_s(n) * 3 / 4 < max(waits) <= rule.ceiling_s(n)
        assert all(2 <= rule.wait_s(n, 2.0, rng) <= 2 + rule.ceiling_s(n) for _ in range(50))
    assert [s for s in range(100, 600) if retried(s)] == [408, 429, *range(500, 600)]
    now = 1_000_000.0
    assert retry_after_s(429, "7") == 7 and retry_after_s(503, " 0 ") == 0
    assert retry_after_s(503, formatdate(now + 30, usegmt=True), now=now) == 30
    assert retry_after_s(503, formatdate(now - 30, usegmt=True), now=now) == 0  # already past
    assert retry_after_s(503, "99999999999") == 86400  # bounded
    for status, value in [(500, "7"), (301, "7"), (429, None), (429, "soon"), (429, "-1"), (429, "1.5"), (429, "٣")]:
        assert retry_after_s(status, value) is None, (status, value)


# --- the retraining's webhook ---------------------------------------------------------------------------------------


def test_the_retraining_webhook_follows_the_same_rule(receiver):
    from korasr.retrain import WEBHOOK_TRIES, notify

    receiver.answers = [404]
    outcome = notify(receiver.url, {"text": "gate"})
    assert (
        outcome == {"delivered": False, "error": "HTTP 404: Not Found", "attempts": 1} and len(receiver.received) == 1
    )
    receiver.answers, receiver.received[:] = [500, (503, {"Retry-After": "1"})], []
    assert notify(receiver.url, {"text": "gate"}) == {"delivered": True, "status": 200, "attempts": 3}
    times = [at for _, _, at in receiver.received]
    assert times[2] - times[1] >= 1 and json.loads(receiver.received[0][1]) == {"text": "gate"}
    receiver.answers, receiver.received[:] = [(429, {"Retry-After": "3600"})], []
    outcome = notify(receiver.url, {"text": "gate"})  # asks for an hour: not waited for
    assert not outcome["delivered"] and "more than 60 s" in outcome["error"] and outcome["attempts"] == 1
    receiver.answers, receiver.received[:] = [500] * WEBHOOK_TRIES, []
    assert notify(receiver.url, {"text": "gate"})["attempts"] == WEBHOOK_TRIES == len(receiver.received)
    assert notify("not a url", {})["attempts"] == 1  # never an exception
