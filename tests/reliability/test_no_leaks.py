"""Secrets and data: nothing the session wrote, answered, published or sent holds a subscription key or the
webhook secret, and no log line holds a prompt in full (``support/leak_watch.py`` taps every sink).

The first tests prove each tap sees what passes through it (a planted secret is found in each sink), so the
whole-session check at the end cannot pass by not looking.
"""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from devstack.gateway import GatewayResponse, LocalApiGateway
from devstack.lambda_context import make_context
from imagegen.adapters.events import EventPublisher
from imagegen.adapters.webhooks import WebhookSender
from support.events import load_event
from support.leak_watch import WATCH, is_xdist_worker, new_watch, watching, webhook_secret_forms
from support.secrets_under_test import SUBSCRIPTION_KEY

WEBHOOK_SECRET = webhook_secret_forms()[0]


class _Socket:
    """Just enough of BaseHTTPRequestHandler for LocalApiGateway._write."""

    def __init__(self) -> None:
        self.wfile = io.BytesIO()

    def send_response(self, code: int) -> None:
        pass

    def send_header(self, name: str, value: str) -> None:
        pass

    def end_headers(self) -> None:
        pass


def test_the_watch_finds_a_secret_planted_in_each_sink() -> None:
    with watching(new_watch()) as watch:
        # a log line, through any logger
        logging.getLogger("imagegen.anything").warning("calling with key %s", SUBSCRIPTION_KEY)
        # an API answer (Powertools' resolver)
        app = APIGatewayRestResolver()
        app.get("/v1/images/<image_id>")(lambda image_id: {"leak": SUBSCRIPTION_KEY})
        app.resolve(load_event("get_image"), make_context("ApiFunction", 29))
        # an answer the local API Gateway writes
        LocalApiGateway._write(_Socket(), "GET", GatewayResponse(200, [("X-Key", SUBSCRIPTION_KEY)], b"{}"))
        # an event
        client = SimpleNamespace(put_events=lambda **_: {"FailedEntryCount": 0, "Entries": [{}]})
        EventPublisher(client, "bus").publish("Image Generated", {"oops": WEBHOOK_SECRET})
        # a webhook (its body)
        WebhookSender(lambda: WEBHOOK_SECRET).headers("msg_1", json.dumps({"oops": SUBSCRIPTION_KEY}))
    found = {(finding.sink, finding.secret) for finding in watch.findings}
    assert found == {
        ("log", "subscription key"),
        ("response", "subscription key"),
        ("event", "webhook secret"),
        ("webhook", "subscription key"),
    }


def test_the_watch_finds_a_prompt_logged_in_full() -> None:
    with watching(new_watch()) as watch:
        watch.prompt_sent("a private prompt about project bluebird")
        watch.prompt_sent("short")  # too short to tell apart from ordinary text: not tracked
        logging.getLogger("imagegen.anything").warning("generating", extra={"prompt": "a private prompt about project"})
        assert watch.prompts_logged() == []
        logging.getLogger("imagegen.anything").warning("generating a private prompt about project bluebird")
        assert watch.prompts_logged() == ["a private prompt about project bluebird"]


def test_signed_webhook_headers_do_not_carry_the_secret() -> None:
    with watching(new_watch()) as watch:
        headers = WebhookSender(lambda: WEBHOOK_SECRET).headers("msg_1", '{"id": "job_1"}')
    assert headers["webhook-signature"].startswith("v1,")
    assert watch.findings == [] and watch.seen["webhook"] == 1


def test_nothing_secret_reached_any_sink(reliability: Any, request: pytest.FixtureRequest) -> None:
    """Runs last (see ``support/leak_watch.py``): the verdict on everything the session produced."""
    if is_xdist_worker(request.config):
        pytest.skip("under pytest-xdist the controller gives this verdict on every worker's watch at the session's end")
    if WATCH.seen["response"] == 0:
        pytest.skip("run with the rest of the suite: on its own there is nothing to look at")
    findings = "\n".join(f"{f.sink} {f.secret} in {f.where}: ...{f.excerpt}..." for f in WATCH.findings)
    leaked_prompts = WATCH.prompts_logged()
    seen = dict(WATCH.seen)
    reliability.record(
        "Secrets and data",
        "subscription keys and webhook secret, whole session",
        f"{len(WATCH.findings)} found in {sum(seen.values())} texts",
        log_lines=seen.get("log", 0),
        responses=seen.get("response", 0),
        events=seen.get("event", 0),
        webhooks=seen.get("webhook", 0),
        findings=len(WATCH.findings),
    )
    reliability.record(
        "Secrets and data",
        "prompts sent upstream, not logged in full",
        f"{len(leaked_prompts)} of {len(WATCH.prompts)} found in a log line",
        prompts=len(WATCH.prompts),
        logged=len(leaked_prompts),
    )
    assert not WATCH.findings, f"secrets reached a sink:\n{findings}"
    assert not leaked_prompts, f"prompts logged in full: {leaked_prompts[:5]}"
