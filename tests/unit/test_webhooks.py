"""Webhook delivery behind the network guard: a refused URL or address is reported undelivered, in the webhook's
own words, and never reaches the receiver (the guard itself: test_netguard.py)."""

from __future__ import annotations

from typing import Any

import pytest
from imagegen.adapters.netguard import Refusal, RefusedError
from imagegen.adapters.webhooks import Delivery, WebhookSender, webhook_refusal


def _sender(**options: Any) -> WebhookSender:
    return WebhookSender(lambda: "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=", sleep=lambda _: None, **options)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/x", "webhook URL scheme 'ftp' is not allowed (https only)"),
        ("http://hooks.example.com/x", "webhook URL scheme 'http' is not allowed (https only)"),
        ("https:///x", "webhook URL has no host"),
        ("https://user:pw@hooks.example.com/x", "webhook URL must not carry credentials"),
    ],
    ids=["ftp", "http-not-allowed", "no-host", "credentials"],
)
def test_webhook_url_refused_by_the_guard_is_reported_in_the_webhooks_words(url: str, reason: str) -> None:
    # Given the production sender (https only), When handed a URL the guard refuses
    delivery = _sender().deliver(url, "msg_1", {"id": "job_1"})
    # Then it is not delivered, no attempt was made, and the reason is the webhook's wording
    assert delivery == Delivery(False, 0, reason=reason)


def test_webhook_to_a_loopback_host_is_refused_without_connecting(http_server: Any) -> None:
    # Given a receiver on loopback and the production sender (public addresses only, http allowed for the test)
    delivery = _sender(allow_http=True).deliver(http_server.url("/hook"), "msg_1", {"id": "job_1"})
    # Then the first attempt is refused at connect time, not retried, and the receiver saw nothing
    assert delivery == Delivery(False, 1, reason="webhook host '127.0.0.1' resolves to a non-public address")
    assert http_server.received == [] and http_server.connections == 0


def test_webhook_host_names_are_not_reworded(resolve_to: Any) -> None:
    # Given a receiver whose name contains "image", resolving to a private address
    recorder = resolve_to("10.0.0.7")
    # When delivered, Then the host is reported as it is (the old text rewriting turned it into "webhooks...")
    delivery = _sender().deliver("https://images.example.com/hook", "msg_1", {"id": "job_1"})
    assert delivery.reason == "webhook host 'images.example.com' resolves to a non-public address"
    assert (delivery.delivered, delivery.attempts, recorder.addresses) == (False, 1, [])


def test_webhook_to_an_unresolvable_host_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_such_host(*args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    delivery = _sender().deliver("https://gone.example.com/hook", "msg_1", {"id": "job_1"})
    assert delivery == Delivery(False, 1, reason="webhook host 'gone.example.com' does not resolve")


@pytest.mark.parametrize("reason", list(Refusal))
def test_webhook_refusal_words_every_reason_of_the_guard(reason: Refusal) -> None:
    text = webhook_refusal(RefusedError(reason, "a neutral sentence", "3"))
    assert "webhook" in text and "image" not in text


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_webhook_redirect_is_not_followed_nor_retried(http_server: Any, status: int) -> None:
    # Given a receiver (on loopback, allowed here as the local stack allows it) that redirects elsewhere
    http_server.reply(status, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
    sender = _sender(allow_http=True, allowed_private_networks=["127.0.0.0/8"])
    # When the webhook is delivered
    delivery = sender.deliver(http_server.url("/hook"), "msg_1", {"id": "job_1"})
    # Then the redirect is reported undelivered after one attempt, and only the named URL was ever asked
    assert delivery == Delivery(False, 1, status, f"HTTP {status}: redirects are not followed")
    assert [request.path for request in http_server.received] == ["/hook"]
