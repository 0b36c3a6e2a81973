"""FluxClient against a scripted loopback server: the contract, retries, deadlines, key refresh, secrecy.

``sleep`` is a recorder on a fake clock (no real waiting) and the jitter comes from a seeded ``random.Random``,
so delays are asserted exactly. Only the timeout and drip tests wait for real (about the 1.2 s budget); their upper
bounds are generous and only tell "gave up at the deadline" from "waited for the upstream" (tens of seconds), never
how fast the machine is.
"""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import pytest
import requests
from imagegen.adapters.flux import MIN_ATTEMPT_S, FluxClient, error_message, parse_retry_after
from imagegen.budget import Deadline
from imagegen.errors import (
    ImageRejectedError,
    UpstreamAuthError,
    UpstreamBadResponseError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from imagegen.models import GenerationParameters
from support.secrets_under_test import UNIT_ROTATED_SUBSCRIPTION_KEY, UNIT_SUBSCRIPTION_KEY

KEY = UNIT_SUBSCRIPTION_KEY
FRESH_KEY = UNIT_ROTATED_SUBSCRIPTION_KEY
SEED = 20240815
PATH = "/flux-1-schnell/v1/getData"
OUTPUT = "https://pub-582b7213209642b9b995c96c95a30381.r2.dev/flux-schnell-cf/prompt-1728386209914-87467.png"
PARAMS = GenerationParameters(
    prompt="a cozy mountain cabin under a starry night sky", num_steps=4, seed=15, width=512, height=768
)
APIM_401 = {
    "statusCode": 401,
    "message": "Access denied due to invalid subscription key. Make sure to provide a valid key for an active "
    "subscription.",
}
APIM_429 = {"statusCode": 429, "message": "Rate limit is exceeded. Try again in 7 seconds."}
APIM_QUOTA = {"statusCode": 403, "message": "Out of call volume quota. Quota will be replenished in 00:05:00."}


class Keys:
    """A key provider: answers the keys in order (the last one repeats), records each ``force_refresh`` flag."""

    def __init__(self, *keys: str) -> None:
        self.keys = list(keys or (KEY,))
        self.calls: list[bool] = []

    def __call__(self, force_refresh: bool = False) -> str:
        self.calls.append(force_refresh)
        return self.keys[min(len(self.calls), len(self.keys)) - 1]


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # the loopback server, never a proxy from the environment
    return session


def _client(url: str, clock: Any, keys: Keys | None = None, **options: Any) -> FluxClient:
    return FluxClient(url, keys or Keys(), session=_session(), sleep=clock.sleep, rng=random.Random(SEED), **options)


def _jitter(*ceilings: float) -> list[float]:
    """The delays a client seeded with SEED draws: ``uniform(0, ceiling)`` in order."""
    rng = random.Random(SEED)
    return [rng.uniform(0, ceiling) for ceiling in ceilings]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------------------------------------------- the contract
def test_flux_client_sends_documented_headers_and_json_body(http_server: Any, fake_clock: Any) -> None:
    # Given an upstream answering 200 with an https output URL
    http_server.reply_json(200, {"output": OUTPUT})
    keys = Keys()
    client = _client(http_server.url(PATH), fake_clock, keys)
    # When an image is generated
    result = client.generate(PARAMS, Deadline.after(30, fake_clock))
    # Then one POST carried exactly the documented headers (once each) and the parameters as well-formed JSON
    assert (result.output_url, result.attempts, result.key_refreshed) == (OUTPUT, 1, False)
    [request] = http_server.received
    assert (request.method, request.path) == ("POST", PATH)
    names = [name.lower() for name, _ in request.raw_headers]
    for name in ("content-type", "cache-control", "ocp-apim-subscription-key"):
        assert names.count(name) == 1
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Cache-Control"] == "no-cache"
    assert request.headers["Ocp-Apim-Subscription-Key"] == KEY
    assert "Authorization" not in request.headers
    assert json.loads(request.body) == {
        "prompt": "a cozy mountain cabin under a starry night sky",
        "num_steps": 4,
        "seed": 15,
        "height": 768,
        "width": 512,
    }
    assert keys.calls == [False]  # the cached key; no forced read
    assert fake_clock.sleeps == []


def test_flux_client_body_round_trips_non_ascii_prompt(http_server: Any, fake_clock: Any) -> None:
    http_server.reply_json(200, {"output": OUTPUT})
    params = PARAMS.model_copy(update={"prompt": 'Café "Zürich" ☕ at dawn\nline two'})
    _client(http_server.url(PATH), fake_clock).generate(params, Deadline.after(30, fake_clock))
    assert json.loads(http_server.received[0].body.decode("utf-8"))["prompt"] == 'Café "Zürich" ☕ at dawn\nline two'


def test_flux_client_output_url_is_trimmed(http_server: Any, fake_clock: Any) -> None:
    http_server.reply_json(200, {"output": f"  {OUTPUT}\n"})
    result = _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(30, fake_clock))
    assert result.output_url == OUTPUT


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"msg": "Image Getting Created"}),
        json.dumps({"output": "https://"}),
        json.dumps({"output": ""}),
        json.dumps({"output": 42}),
        json.dumps({"output": [OUTPUT]}),
        json.dumps([OUTPUT]),
        "<html>gateway</html>",
        "",
    ],
    ids=["msg-only", "no-host", "empty", "number", "list", "array", "html", "no-body"],
)
def test_flux_client_200_without_usable_output_is_bad_response(http_server: Any, fake_clock: Any, body: str) -> None:
    # Given a 200 that carries no usable output URL at all
    http_server.reply(200, body, {"Content-Type": "application/json"})
    # When an image is generated, Then it is not a success
    with pytest.raises(UpstreamBadResponseError) as caught:
        _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(30, fake_clock))
    assert caught.value.code == "upstream_bad_response"
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    ("output", "why"),
    [
        (OUTPUT.replace("https://", "http://"), "scheme 'http'"),
        ("ftp://pub-1.r2.dev/x.png", "scheme 'ftp'"),
        (OUTPUT.replace("https://", "https://user:secret@"), "credentials"),
    ],
    ids=["http", "ftp", "credentials"],
)
def test_flux_client_200_with_a_refused_output_url_is_a_permanent_refusal(
    http_server: Any, fake_clock: Any, output: str, why: str
) -> None:
    # Given a paid 200 whose output is a URL, but one the service refuses to fetch
    http_server.reply_json(200, {"output": output})
    # When an image is generated, Then it is an image refusal, not retryable: another call would pay again
    with pytest.raises(ImageRejectedError, match=why) as caught:
        _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(30, fake_clock))
    assert caught.value.code == "image_rejected" and caught.value.retryable is False
    assert "secret" not in caught.value.message


def test_flux_client_http_output_accepted_only_when_allowed(http_server: Any, fake_clock: Any) -> None:
    # Given the local stack's upstream emulator, which serves images over http
    http_output = "http://127.0.0.1:9/images/x.png"
    http_server.reply_json(200, {"output": http_output})
    client = _client(http_server.url(PATH), fake_clock, allow_http_output=True)
    # When allowed, Then an http output URL is accepted
    assert client.generate(PARAMS, Deadline.after(30, fake_clock)).output_url == http_output


def test_flux_client_oversized_answer_is_bad_response(http_server: Any, fake_clock: Any) -> None:
    http_server.reply(200, json.dumps({"output": OUTPUT, "pad": "x" * 70_000}))
    with pytest.raises(UpstreamBadResponseError, match="oversized"):
        _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(30, fake_clock))


# ---------------------------------------------------------------------------------------------------- permanent errors
@pytest.mark.parametrize(
    "document",
    [{"error": "Invalid prompt parameter"}, {"statusCode": 400, "message": "Invalid prompt parameter"}],
    ids=["documented", "apim"],
)
def test_flux_client_400_is_rejected_with_their_message(http_server: Any, fake_clock: Any, document: Any) -> None:
    # Given an upstream refusing the parameters (either body shape)
    http_server.reply_json(400, document)
    # When an image is generated
    with pytest.raises(UpstreamRejectedError) as caught:
        _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(30, fake_clock))
    # Then the caller gets their message, a 400, and no retry was made
    assert "Invalid prompt parameter" in caught.value.message
    assert caught.value.status == 400
    assert len(http_server.received) == 1
    assert fake_clock.sleeps == []


def test_flux_client_404_is_a_plain_upstream_error_without_retry(http_server: Any, fake_clock: Any) -> None:
    http_server.reply_json(404, {"error": "Endpoint not found"})
    with pytest.raises(UpstreamError) as caught:
        _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(30, fake_clock))
    assert type(caught.value) is UpstreamError
    assert caught.value.code == "upstream_bad_response"
    assert "404" in caught.value.message
    assert "Endpoint not found" not in caught.value.message  # their text goes to our log, not to callers
    assert len(http_server.received) == 1


# ---------------------------------------------------------------------------------------------------- retries
def test_flux_client_retries_429_and_5xx_with_full_jitter_then_succeeds(http_server: Any, fake_clock: Any) -> None:
    # Given an upstream failing three times (no Retry-After) before answering
    http_server.reply_json(503, {"error": "busy"}).reply_json(429, {"error": "Rate limit exceeded, please retry later"})
    http_server.reply_json(500, {"error": "An unexpected error occurred"}).reply_json(200, {"output": OUTPUT})
    client = _client(http_server.url(PATH), fake_clock, max_attempts=4, backoff_base_s=0.5, backoff_max_s=8.0)
    # When an image is generated
    result = client.generate(PARAMS, Deadline.after(30, fake_clock))
    # Then it succeeds on the 4th attempt after exponential full-jitter delays: uniform(0, 0.5·2^n)
    assert (result.output_url, result.attempts) == (OUTPUT, 4)
    assert len(http_server.received) == 4
    assert fake_clock.sleeps == pytest.approx(_jitter(0.5, 1.0, 2.0))
    assert all(request.headers["Ocp-Apim-Subscription-Key"] == KEY for request in http_server.received)


def test_flux_client_backoff_ceiling_is_capped(http_server: Any, fake_clock: Any) -> None:
    for _ in range(5):
        http_server.reply_json(502, {"error": "bad gateway"})
    http_server.reply_json(200, {"output": OUTPUT})
    client = _client(http_server.url(PATH), fake_clock, max_attempts=6, backoff_base_s=1.0, backoff_max_s=3.0)
    client.generate(PARAMS, Deadline.after(60, fake_clock))
    assert fake_clock.sleeps == pytest.approx(_jitter(1.0, 2.0, 3.0, 3.0, 3.0))


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_flux_client_gives_up_after_max_attempts(http_server: Any, fake_clock: Any, status: int) -> None:
    # Given an upstream that keeps failing
    for _ in range(5):
        http_server.reply_json(status, {"error": "nope"})
    # When an image is generated with 3 attempts allowed
    with pytest.raises(UpstreamUnavailableError) as caught:
        _client(http_server.url(PATH), fake_clock, max_attempts=3).generate(PARAMS, Deadline.after(30, fake_clock))
    # Then exactly 3 requests were made, 2 delays slept, and the caller is told to retry later
    assert len(http_server.received) == 3
    assert len(fake_clock.sleeps) == 2
    assert caught.value.status == 503
    assert caught.value.code == "upstream_unavailable"
    assert caught.value.retry_after == 1
    assert str(status) in caught.value.message


def test_flux_client_honours_retry_after_seconds(http_server: Any, fake_clock: Any) -> None:
    # Given a 429 with Retry-After in seconds
    http_server.reply_json(429, {"error": "slow down"}, {"Retry-After": "3"}).reply_json(200, {"output": OUTPUT})
    # When an image is generated
    result = _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(30, fake_clock))
    # Then the client waited Retry-After plus at most 250 ms of jitter, not the exponential backoff
    assert result.attempts == 2
    assert fake_clock.sleeps == pytest.approx([3 + _jitter(0.25)[0]])


def test_flux_client_honours_retry_after_http_date(http_server: Any, fake_clock: Any) -> None:
    # Given a 503 whose Retry-After is an HTTP-date 20 s ahead (the client reads it against the real wall clock;
    # the exact arithmetic is pinned with an explicit ``now`` in test_flux_client_parse_retry_after_http_date_*)
    retry_at = formatdate(time.time() + 20, usegmt=True)
    http_server.reply_json(503, {"error": "maintenance"}, {"Retry-After": retry_at})
    http_server.reply_json(200, {"output": OUTPUT})
    # When an image is generated
    _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(30, fake_clock))
    # Then the delay is the time until that date (1 s resolution) plus at most 250 ms of jitter: far above the
    # exponential backoff (< 0.5 s), never past the date; 5 s of slack for a slow machine between here and there
    [delay] = fake_clock.sleeps
    assert 15.0 < delay <= 20.25


def test_flux_client_reads_apim_try_again_in_message(http_server: Any, fake_clock: Any) -> None:
    # Given APIM's 429 body without a Retry-After header
    http_server.reply_json(429, APIM_429).reply_json(200, {"output": OUTPUT})
    _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(30, fake_clock))
    # Then the "Try again in 7 seconds" of the message is honoured
    assert fake_clock.sleeps == pytest.approx([7 + _jitter(0.25)[0]])


def test_flux_client_retry_after_beyond_deadline_fails_fast_without_sleeping(http_server: Any, fake_clock: Any) -> None:
    # Given a 429 asking for 60 s while only 10 s of budget remain
    http_server.reply_json(429, {"error": "later"}, {"Retry-After": "60"}).reply_json(200, {"output": OUTPUT})
    # When an image is generated
    with pytest.raises(UpstreamUnavailableError) as caught:
        _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(10, fake_clock))
    # Then the client does not sleep at all and passes the upstream's wait on to the caller
    assert fake_clock.sleeps == []
    assert len(http_server.received) == 1
    assert caught.value.retry_after == 60


def test_flux_client_does_not_sleep_into_the_last_second(http_server: Any, fake_clock: Any) -> None:
    # Given a 503 asking for 9 s while 10 s remain: the wait fits, but would leave less than one attempt's time
    http_server.reply_json(503, {"error": "busy"}, {"Retry-After": "9"}).reply_json(200, {"output": OUTPUT})
    # When an image is generated
    with pytest.raises(UpstreamUnavailableError) as caught:
        _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(10, fake_clock))
    # Then the client answers at once instead of sleeping only to find no time left
    assert fake_clock.sleeps == []
    assert len(http_server.received) == 1
    assert caught.value.retry_after == 9


def test_flux_client_never_sleeps_past_the_deadline(http_server: Any, fake_clock: Any) -> None:
    # Given an upstream that is always unavailable, many attempts allowed, and a 6 s budget
    for _ in range(12):
        http_server.reply_json(503, {"error": "down"})
    deadline = Deadline.after(6, fake_clock)
    client = _client(http_server.url(PATH), fake_clock, max_attempts=12, backoff_base_s=1.0, backoff_max_s=8.0)
    # When an image is generated
    with pytest.raises(UpstreamUnavailableError):
        client.generate(PARAMS, deadline)
    # Then the delays together leave at least one attempt's worth of time, and each sleep was followed by a request
    assert fake_clock.sleeps, "expected at least one retry"
    assert fake_clock.now <= deadline.expires_at - MIN_ATTEMPT_S
    assert len(http_server.received) == len(fake_clock.sleeps) + 1
    assert len(http_server.received) < 12  # the deadline, not max_attempts, ended it


def test_flux_client_without_time_for_one_attempt_does_not_call(http_server: Any, fake_clock: Any) -> None:
    # Given less than the minimum attempt time left
    http_server.reply_json(200, {"output": OUTPUT})
    # When an image is generated, Then it times out at once without calling the upstream
    with pytest.raises(UpstreamTimeoutError):
        _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(0.5, fake_clock))
    assert http_server.received == []


def test_flux_client_connection_refused_is_retried_then_unavailable(fake_clock: Any) -> None:
    # Given nothing listening on the upstream's port
    url = f"http://127.0.0.1:{_closed_port()}{PATH}"
    # When an image is generated
    with pytest.raises(UpstreamUnavailableError) as caught:
        _client(url, fake_clock, max_attempts=3).generate(PARAMS, Deadline.after(30, fake_clock))
    # Then every attempt was made, with backoff in between
    assert fake_clock.sleeps == pytest.approx(_jitter(0.5, 1.0))
    assert "connection error" in caught.value.message


def test_flux_client_truncated_answer_is_retried(http_server: Any, fake_clock: Any) -> None:
    # Given an answer cut off mid-body, then a good one
    http_server.reply(200, b'{"output": "https://pub-1.r2', declared_length=200)
    http_server.reply_json(200, {"output": OUTPUT})
    # When an image is generated, Then the broken answer counts as one retryable attempt
    result = _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(30, fake_clock))
    assert (result.output_url, result.attempts) == (OUTPUT, 2)
    assert len(fake_clock.sleeps) == 1


# ---------------------------------------------------------------------------------------------------- key refresh
@pytest.mark.parametrize("status", [401, 403])
def test_flux_client_refreshes_key_once_on_auth_failure_then_succeeds(
    http_server: Any, fake_clock: Any, status: int
) -> None:
    # Given a rotated key: the cached one is refused, the freshly read one works
    http_server.reply_json(status, APIM_401 if status == 401 else {"error": "Access denied for this operation"})
    http_server.reply_json(200, {"output": OUTPUT})
    keys = Keys(KEY, FRESH_KEY)
    # When an image is generated
    result = _client(http_server.url(PATH), fake_clock, keys).generate(PARAMS, Deadline.after(30, fake_clock))
    # Then the secret was re-read once bypassing the cache, the retry used the new key at once, and it counts once
    assert keys.calls == [False, True]
    sent = [request.headers["Ocp-Apim-Subscription-Key"] for request in http_server.received]
    assert sent == [KEY, FRESH_KEY]
    assert (result.output_url, result.attempts, result.key_refreshed) == (OUTPUT, 1, True)
    assert fake_clock.sleeps == []


def test_flux_client_second_auth_failure_is_auth_error(
    http_server: Any, fake_clock: Any, assert_secret_absent: Callable[[BaseException, str], None]
) -> None:
    # Given an upstream refusing both the cached and the fresh key
    http_server.reply_json(401, APIM_401).reply_json(401, APIM_401).reply_json(200, {"output": OUTPUT})
    keys = Keys(KEY, FRESH_KEY)
    # When an image is generated
    with pytest.raises(UpstreamAuthError) as caught:
        _client(http_server.url(PATH), fake_clock, keys).generate(PARAMS, Deadline.after(30, fake_clock))
    # Then exactly one refresh and two requests were made, and neither key shows in the error
    assert keys.calls == [False, True]
    assert len(http_server.received) == 2
    assert caught.value.code == "upstream_auth"
    assert caught.value.status == 502
    assert_secret_absent(caught.value, KEY)
    assert_secret_absent(caught.value, FRESH_KEY)


def test_flux_client_quota_403_is_unavailable_without_key_refresh(http_server: Any, fake_clock: Any) -> None:
    # Given APIM's out-of-quota 403
    http_server.reply_json(403, APIM_QUOTA).reply_json(200, {"output": OUTPUT})
    keys = Keys(KEY, FRESH_KEY)
    # When an image is generated
    with pytest.raises(UpstreamUnavailableError) as caught:
        _client(http_server.url(PATH), fake_clock, keys).generate(PARAMS, Deadline.after(30, fake_clock))
    # Then it is not an auth problem: no refresh, no retry, and the replenish time becomes retry_after
    assert caught.value.code == "upstream_quota_exhausted"
    assert caught.value.retry_after == 300
    assert keys.calls == [False]
    assert len(http_server.received) == 1


def test_flux_client_quota_403_uses_retry_after_header_when_message_has_no_time(
    http_server: Any, fake_clock: Any
) -> None:
    http_server.reply_json(403, {"statusCode": 403, "message": "Out of call volume quota."}, {"Retry-After": "90"})
    with pytest.raises(UpstreamUnavailableError) as caught:
        _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(30, fake_clock))
    assert (caught.value.code, caught.value.retry_after) == ("upstream_quota_exhausted", 90)


# ---------------------------------------------------------------------------------------------------- secrecy
@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ([(401, APIM_401), (403, {"error": "Access denied for this operation"})], UpstreamAuthError),
        ([(400, {"error": "Invalid prompt parameter"})], UpstreamRejectedError),
        ([(503, {"error": "down"})] * 2, UpstreamUnavailableError),
        ([(403, APIM_QUOTA)], UpstreamUnavailableError),
        ([(200, {"msg": "Image Getting Created"})], UpstreamBadResponseError),
        ([(418, {"error": "teapot"})], UpstreamError),
    ],
    ids=["auth", "rejected", "unavailable", "quota", "bad-response", "other-status"],
)
def test_flux_client_key_absent_from_every_error(
    http_server: Any,
    fake_clock: Any,
    assert_secret_absent: Callable[[BaseException, str], None],
    answers: list[tuple[int, Any]],
    expected: type[Exception],
) -> None:
    # Given an upstream failing in one of the ways the client translates
    for status, document in answers:
        http_server.reply_json(status, document)
    # When an image is generated
    with pytest.raises(expected) as caught:
        _client(http_server.url(PATH), fake_clock, Keys(KEY, FRESH_KEY), max_attempts=2).generate(
            PARAMS, Deadline.after(30, fake_clock)
        )
    # Then neither key appears in the error or anything chained to it
    assert_secret_absent(caught.value, KEY)
    assert_secret_absent(caught.value, FRESH_KEY)


def test_flux_client_key_absent_from_connection_errors(
    fake_clock: Any, assert_secret_absent: Callable[[BaseException, str], None]
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}{PATH}"
    with pytest.raises(UpstreamUnavailableError) as caught:
        _client(url, fake_clock, max_attempts=1).generate(PARAMS, Deadline.after(30, fake_clock))
    assert_secret_absent(caught.value, KEY)


def _fragments_in(exc: BaseException, secret: str, size: int) -> list[str]:
    """Every ``size``-character piece of ``secret`` found in the str, repr, args or message of ``exc`` or of
    anything chained to it."""
    pieces = {secret[start : start + size] for start in range(len(secret) - size + 1)}
    texts: list[str] = []
    pending: list[BaseException | None] = [exc]
    seen: list[BaseException] = []
    while pending:
        link = pending.pop()
        if link is None or any(link is known for known in seen):
            continue
        seen.append(link)
        texts += [str(link), repr(link), repr(link.args), str(getattr(link, "message", ""))]
        pending += [link.__cause__, link.__context__]
    return sorted(piece for piece in pieces if any(piece in text for text in texts))


def test_flux_client_key_echoed_near_the_start_of_a_400_is_redacted(
    http_server: Any, fake_clock: Any, assert_secret_absent: Callable[[BaseException, str], None]
) -> None:
    # Given an upstream (a gateway, a debug page) echoing the subscription key near the start of its 400 body
    http_server.reply_json(400, {"error": f"subscription key {KEY} may not ask for this prompt"})
    # When an image is generated
    with pytest.raises(UpstreamRejectedError) as caught:
        _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(30, fake_clock))
    # Then the caller still gets their message, with the key replaced, and not even a piece of it left anywhere
    assert "[redacted]" in caught.value.message
    assert "may not ask for this prompt" in caught.value.message
    assert_secret_absent(caught.value, KEY)
    assert _fragments_in(caught.value, KEY, 8) == []


@pytest.mark.parametrize("filler", [285, 295], ids=["marker-fits", "marker-cut"])
def test_flux_client_key_straddling_the_message_cut_is_redacted(
    http_server: Any, fake_clock: Any, assert_secret_absent: Callable[[BaseException, str], None], filler: int
) -> None:
    # Given a 400 body whose echoed key starts before and ends after character 300, where the message is cut
    # (redacting only after the cut would leave the key's first 300 - filler characters in the message)
    assert filler < 300 < filler + len(KEY)
    http_server.reply(400, "x" * filler + KEY + " was refused", {"Content-Type": "text/plain"})
    # When an image is generated
    with pytest.raises(UpstreamRejectedError) as caught:
        _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(30, fake_clock))
    # Then no piece of the key survives the cut (8 characters, or all that would fit before it when fewer)
    assert "x" * filler in caught.value.message
    assert_secret_absent(caught.value, KEY)
    assert _fragments_in(caught.value, KEY, min(8, 300 - filler)) == []
    # And the key was replaced by the marker, in full wherever it fits before the cut
    if filler + len("[redacted]") <= 300:
        assert "[redacted]" in caught.value.message
        assert "[redacted]" in str(caught.value)


# ---------------------------------------------------------------------------------------------------- time budget
def test_flux_client_silent_upstream_times_out_within_the_budget(
    http_server: Any, fake_clock: Any, assert_secret_absent: Callable[[BaseException, str], None]
) -> None:
    # Given an upstream that would answer (successfully) only after 60 s, far beyond the 1.2 s budget
    http_server.reply(200, json.dumps({"output": OUTPUT}), delay_s=60.0)
    client = _client(http_server.url(PATH), fake_clock)
    deadline = Deadline.after(1.2)
    started = time.monotonic()
    # When an image is generated
    with pytest.raises(UpstreamTimeoutError) as caught:
        client.generate(PARAMS, deadline)
    elapsed = time.monotonic() - started
    # Then it gives up once the budget is spent (not before; and not by waiting for the answer, which would take
    # 60 s and be a success), without retrying, and the key is not in the error
    assert elapsed >= 1.0
    assert elapsed < 30, f"took {elapsed:.1f} s: the client waited for the upstream instead of its deadline"
    assert len(http_server.received) == 1
    assert fake_clock.sleeps == []
    assert caught.value.code == "upstream_timeout"
    assert_secret_absent(caught.value, KEY)


def test_flux_client_dripping_upstream_is_cut_at_the_deadline(
    http_server: Any, fake_clock: Any, assert_secret_absent: Callable[[BaseException, str], None]
) -> None:
    # Given an upstream that sends its headers at once, then a valid 200 body one byte every 0.3 s (never tripping
    # the socket timeout; the whole body takes over a minute), and a budget just over the 1 s an attempt needs
    body = json.dumps({"output": OUTPUT, "pad": "x" * 100})
    assert len(body) * 0.3 > 60
    http_server.reply(200, body, drip_s=0.3)
    client = _client(http_server.url(PATH), fake_clock)
    started = time.monotonic()
    # When an image is generated
    with pytest.raises(UpstreamTimeoutError) as caught:
        client.generate(PARAMS, Deadline.after(1.2))
    elapsed = time.monotonic() - started
    # Then the body read stops at the deadline (not before it), not after the whole body (which would succeed)
    assert elapsed >= 1.1
    assert elapsed < 30, f"took {elapsed:.1f} s: the client read the dripping body past its deadline"
    assert fake_clock.sleeps == []
    assert len(http_server.received) == 1
    assert_secret_absent(caught.value, KEY)


# ---------------------------------------------------------------------------------------------------- parsing helpers
@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("5", 5.0), (" 7 ", 7.0), ("0", 0.0), ("soon", None), ("-3", None), ("1.5", None)],
)
def test_flux_client_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_flux_client_parse_retry_after_http_date_against_now() -> None:
    now = 1445412470.0  # 2015-10-21 07:27:50 UTC
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now=now) == 0.0  # past: no wait, never negative


def test_flux_client_malformed_retry_after_digit_is_ignored(http_server: Any, fake_clock: Any) -> None:
    # Given a 503 whose Retry-After is a superscript digit (a valid latin-1 header byte, but no number)
    http_server.reply_json(503, {"error": "busy"}, {"Retry-After": "\u00b2"}).reply_json(200, {"output": OUTPUT})
    # When an image is generated, Then the header is ignored like any unreadable value and the retry succeeds
    result = _client(http_server.url(PATH), fake_clock).generate(PARAMS, Deadline.after(30, fake_clock))
    assert result.attempts == 2


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": "Invalid prompt parameter"}', "Invalid prompt parameter"),
        (b'{"statusCode": 429, "message": "Rate limit is exceeded."}', "Rate limit is exceeded."),
        (b'{"msg": "Image Getting Created"}', "Image Getting Created"),
        (b'{"error": {"code": "x", "message": "nested"}}', "nested"),
        (b'{"error": "", "message": "fallback"}', "fallback"),
        (b'"just a string"', "just a string"),
        (b"plain text failure", "plain text failure"),
        (b'{"error": "line\\none\\u0007"}', "line one"),
        (b"", "no message"),
        (b"{}", "{}"),
    ],
)
def test_flux_client_error_message_reads_both_body_shapes(body: bytes, expected: str) -> None:
    assert error_message(body) == expected


def test_flux_client_error_message_is_bounded() -> None:
    assert len(error_message(json.dumps({"error": "x" * 5000}).encode())) == 300
