"""Watch every sink of the whole test session for secrets and prompts.

Taps, installed when the session starts:

- **log lines**: every ``logging`` record any logger hands to its handlers (message, exception text and every
  structured key Powertools adds), and everything printed that pytest captured (Powertools' JSON logs and EMF
  metrics go to stdout), including output a test read with ``capsys``;
- **responses**: every answer of the API handler (Powertools' resolver) and every answer the local API Gateway
  writes to a socket (its own 403/429/5xx included);
- **events**: every EventBridge entry the service publishes;
- **webhooks**: every webhook body and its signed headers.

Each text is searched for the subscription keys and the webhook secret the tests plant (raw, and the webhook
secret in the base64 form ``standardwebhooks`` signs with). The prompts are collected where they enter (every API
request body, and what the upstream received); at the end no log line may hold one in full.
``tests/reliability/test_no_leaks.py`` runs last and fails on any finding.

Under pytest-xdist every worker process has its own stack and its own taps: each sends what its watch saw to the
controller when it finishes, and the controller gives the verdict on the whole session (the same two cases in the
reliability report; findings fail the run and are listed in the terminal summary). The test itself then skips,
saying so: on one worker it would see only that worker's share.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from support.secrets_under_test import SUBSCRIPTION_KEYS

LAST_TEST = "test_nothing_secret_reached_any_sink"
MIN_PROMPT_CHARS = 16  # shorter prompts ("p0", "a fox") are substrings of ordinary text


def webhook_secret_forms() -> tuple[str, ...]:
    from devstack.aws import Resources

    raw = Resources.webhook_secret_value
    return raw, base64.b64encode(raw.encode()).decode()


@dataclass
class Finding:
    sink: str
    secret: str
    where: str
    excerpt: str


@dataclass
class LeakWatch:
    secrets: dict[str, str]  # value -> what it is
    seen: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    prompts: set[str] = field(default_factory=set)
    log_texts: list[str] = field(default_factory=list)
    where: str = ""
    _reported: set[tuple[str, str, str]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def scan(self, sink: str, text: str) -> None:
        with self._lock:
            self.seen[sink] += 1
            if sink == "log":
                self.log_texts.append(text)
            for value, name in self.secrets.items():
                at = text.find(value)
                if at >= 0 and (sink, name, self.where) not in self._reported:
                    self._reported.add((sink, name, self.where))
                    excerpt = text[max(0, at - 80) : at + len(value) + 40].replace(value, f"<{name}>")
                    self.findings.append(Finding(sink, name, self.where, excerpt))

    def prompt_sent(self, prompt: str) -> None:
        if len(prompt) >= MIN_PROMPT_CHARS:
            with self._lock:
                self.prompts.add(prompt)

    def prompts_logged(self) -> list[str]:
        """Prompts that appear in full in some log line (one big text: a substring search per prompt)."""
        logs = "\n".join(self.log_texts)
        return sorted(prompt for prompt in self.prompts if prompt in logs)


def new_watch() -> LeakWatch:
    secrets = dict.fromkeys(SUBSCRIPTION_KEYS, "subscription key")
    secrets.update(dict.fromkeys(webhook_secret_forms(), "webhook secret"))
    return LeakWatch(secrets)


WATCH = new_watch()
_current: list[LeakWatch] = [WATCH]
_planting_tests: set[str] = set()


def current() -> LeakWatch:
    return _current[-1]


@contextlib.contextmanager
def watching(watch: LeakWatch) -> Iterator[LeakWatch]:
    """Route every tap to ``watch`` for a while (the taps' own tests, which plant secrets on purpose). What that
    test printed is planted too: its captured output is not scanned afterwards."""
    _planting_tests.add(WATCH.where)
    _current.append(watch)
    try:
        yield watch
    finally:
        _current.pop()


# ------------------------------------------------------------------------------------------------ the taps
def _record_text(record: logging.LogRecord) -> str:
    parts = [record.getMessage()]
    extras = {k: v for k, v in vars(record).items() if k not in ("msg", "args", "exc_info", "message")}
    parts.append(repr(extras))
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


def _prompts_in(body: Any) -> list[str]:
    """The prompts of an API request body (an image request, or a job's items), whatever else it holds."""
    try:
        payload = json.loads(body) if isinstance(body, str) else None
    except (ValueError, RecursionError):  # a tap never changes what the request does
        return []
    candidates = [payload] + (
        payload.get("items") if isinstance(payload, dict) and isinstance(payload.get("items"), list) else []
    )
    return [c["prompt"] for c in candidates if isinstance(c, dict) and isinstance(c.get("prompt"), str)]


def install() -> None:
    """Patch the sinks' choke points; idempotent, for the life of the process."""
    if getattr(install, "done", False):
        return
    install.done = True  # type: ignore[attr-defined]

    real_call_handlers = logging.Logger.callHandlers

    def call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
        current().scan("log", _record_text(record))
        real_call_handlers(self, record)

    logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign]

    real_readouterr = pytest.CaptureFixture.readouterr

    def readouterr(self: pytest.CaptureFixture[Any]) -> Any:
        captured = real_readouterr(self)
        for text in captured:
            if text:
                current().scan("log", text if isinstance(text, str) else text.decode("utf-8", "replace"))
        return captured

    pytest.CaptureFixture.readouterr = readouterr  # type: ignore[method-assign]

    from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver

    real_resolve = ApiGatewayResolver.resolve

    def resolve(self: ApiGatewayResolver, event: Any, context: Any) -> dict[str, Any]:
        for prompt in _prompts_in(event.get("body") if isinstance(event, dict) else None):
            current().prompt_sent(prompt)
        answer = real_resolve(self, event, context)
        current().scan("response", json.dumps(answer, default=str))
        return answer

    ApiGatewayResolver.resolve = resolve  # type: ignore[method-assign]

    from devstack.gateway import LocalApiGateway

    real_write = LocalApiGateway._write

    def write(request: Any, method: str, response: Any) -> None:
        headers = "\n".join(f"{name}: {value}" for name, value in response.headers)
        current().scan("response", headers + "\n\n" + response.body.decode("utf-8", "replace"))
        real_write(request, method, response)

    LocalApiGateway._write = staticmethod(write)  # type: ignore[method-assign]

    from imagegen.adapters.events import EventPublisher

    real_put = EventPublisher.publish

    def publish(self: EventPublisher, detail_type: str, detail: dict[str, Any], attempts: int = 3) -> bool:
        current().scan("event", detail_type + "\n" + json.dumps(detail, default=str))
        return real_put(self, detail_type, detail, attempts)

    EventPublisher.publish = publish  # type: ignore[method-assign]

    from imagegen.adapters.webhooks import WebhookSender

    real_headers = WebhookSender.headers
    real_deliver = WebhookSender.deliver

    def headers(self: WebhookSender, message_id: str, body: str, now: Any = None) -> dict[str, str]:
        signed = real_headers(self, message_id, body, now)
        current().scan("webhook", json.dumps(signed) + "\n" + body)
        return signed

    def deliver(self: WebhookSender, url: str, message_id: str, payload: dict[str, Any]) -> Any:
        current().scan("webhook", url + "\n" + json.dumps(payload, default=str))
        return real_deliver(self, url, message_id, payload)

    WebhookSender.headers = headers  # type: ignore[method-assign]
    WebhookSender.deliver = deliver  # type: ignore[method-assign]

    from devstack.flux_emulator import FluxEmulator

    real_generation = FluxEmulator._handle_generation

    def handle_generation(self: FluxEmulator, handler: Any, body: bytes) -> None:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            prompt = json.loads(body).get("prompt")
            if isinstance(prompt, str):
                current().prompt_sent(prompt)
        real_generation(self, handler, body)

    FluxEmulator._handle_generation = handle_generation  # type: ignore[method-assign]


# ------------------------------------------------------------------------------------------------ pytest hooks
def pytest_sessionstart(session: pytest.Session) -> None:
    install()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    WATCH.where = item.nodeid
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "teardown" or item.nodeid in _planting_tests:
        return  # the teardown report carries the output of all three phases
    WATCH.where = item.nodeid
    for name, text in report.sections:
        if name.startswith("Captured"):
            WATCH.scan("log", text)


# ------------------------------------------------------------------------------------------------ under pytest-xdist
_FROM_WORKERS: list[dict[str, Any]] = []
_VERDICT: list[str] = []  # the controller's findings, for the terminal summary


def worker_payload(watch: LeakWatch, last_test: str | None) -> dict[str, Any]:
    """What one worker's watch saw, as plain data execnet can carry. ``last_test``: the whole-session test's node id
    when it was selected (without it there is no verdict, as in one process). A prompt counts as logged when a log
    line of the same worker holds it: the stack runs in the worker's process, so its prompts and logs are there."""
    return {
        "last_test": last_test,
        "seen": dict(watch.seen),
        "findings": [vars(finding) for finding in watch.findings],
        "prompts": sorted(watch.prompts),
        "leaked": watch.prompts_logged(),
    }


@dataclass
class SessionVerdict:
    seen: Counter[str]
    findings: list[Finding]
    prompts: set[str]
    leaked: list[str]

    @classmethod
    def merge(cls, payloads: list[dict[str, Any]]) -> SessionVerdict:
        seen: Counter[str] = Counter()
        for payload in payloads:
            seen.update(payload["seen"])
        return cls(
            seen=seen,
            findings=[Finding(**finding) for payload in payloads for finding in payload["findings"]],
            prompts={prompt for payload in payloads for prompt in payload["prompts"]},
            leaked=sorted({prompt for payload in payloads for prompt in payload["leaked"]}),
        )

    def failures(self) -> list[str]:
        lines = [f"secrets reached a sink: {f.sink} {f.secret} in {f.where}: ...{f.excerpt}..." for f in self.findings]
        return lines + [f"prompt logged in full: {prompt}" for prompt in self.leaked[:5]]


def is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    payload = getattr(node, "workeroutput", {}).get("leak_watch")
    if payload is not None:
        _FROM_WORKERS.append(payload)


@pytest.hookimpl(tryfirst=True)  # before the reliability report is written: the verdict is two of its cases
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if is_xdist_worker(session.config):
        last_test = next((item.nodeid for item in session.items if item.name == LAST_TEST), None)
        session.config.workeroutput["leak_watch"] = worker_payload(WATCH, last_test)  # type: ignore[attr-defined]
        return
    payloads, _FROM_WORKERS[:] = list(_FROM_WORKERS), []
    last_test = next((payload["last_test"] for payload in payloads if payload["last_test"]), None)
    if last_test is None:
        return  # one process (the test gave the verdict), or the whole-session test was not selected
    verdict = SessionVerdict.merge(payloads)
    if verdict.seen["response"] == 0:
        return  # as the test skips: nothing to look at
    from support.reliability import _REPORT

    _REPORT._current_test = last_test
    _REPORT.record(
        "Secrets and data",
        "subscription keys and webhook secret, whole session",
        f"{len(verdict.findings)} found in {sum(verdict.seen.values())} texts",
        log_lines=verdict.seen.get("log", 0),
        responses=verdict.seen.get("response", 0),
        events=verdict.seen.get("event", 0),
        webhooks=verdict.seen.get("webhook", 0),
        findings=len(verdict.findings),
    )
    _REPORT.record(
        "Secrets and data",
        "prompts sent upstream, not logged in full",
        f"{len(verdict.leaked)} of {len(verdict.prompts)} found in a log line",
        prompts=len(verdict.prompts),
        logged=len(verdict.leaked),
    )
    _REPORT.settle(_REPORT._current_test, passed=not verdict.failures())
    _REPORT._current_test = ""
    _VERDICT[:] = verdict.failures()
    if _VERDICT:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _VERDICT:
        terminalreporter.section("leak watch: the whole session (every xdist worker)", red=True)
        for line in _VERDICT:
            terminalreporter.write_line(line, red=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The whole-session check runs after everything else."""
    last = [item for item in items if item.name == LAST_TEST]
    items[:] = [item for item in items if item.name != LAST_TEST] + last
