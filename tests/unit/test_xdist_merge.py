"""The suite's own plugins under pytest-xdist: what each worker sends and how the controller puts it together
(the reliability report in collection order; the leak watch's whole-session verdict)."""

from __future__ import annotations

import execnet
from support.leak_watch import Finding, LeakWatch, SessionVerdict
from support.leak_watch import worker_payload as watch_payload
from support.reliability import Case, ReliabilityReport, merged_cases
from support.reliability import worker_payload as cases_payload


def _report(*cases: tuple[str, str]) -> ReliabilityReport:
    report = ReliabilityReport()
    for test, case in cases:
        report._current_test = test
        report.record("Upstream faults", case, "503", upstream_calls=3)
        report.settle(test, passed=True)
    return report


def test_worker_cases_come_back_in_collection_order_whatever_the_worker():
    # Given a collection of four tests, run by two workers in an interleaved order, the first test recording twice
    order = {"t::a": 0, "t::b": 1, "t::c": 2, "t::d": 3}
    first = _report(("t::d", "d"), ("t::a", "a1"), ("t::a", "a2"))
    second = _report(("t::c", "c"), ("t::b", "b"))
    # When the controller merges what they sent (a worker's payload crosses execnet, so it must be plain data)
    payloads = cases_payload(first, order) + cases_payload(second, order)
    assert execnet.loads(execnet.dumps(payloads)) == payloads
    own = [Case("Secrets and data", "whole session", "0 found", "t::z", {}, True)]
    merged = merged_cases(payloads, own)
    # Then the cases are in collection order, a test's own cases in the order recorded, the controller's last
    assert [case.case for case in merged] == ["a1", "a2", "b", "c", "d", "whole session"]
    assert all(case.held for case in merged) and merged[0].figures == {"upstream_calls": 3}


def test_the_leak_verdict_merges_every_worker_and_fails_on_one_finding():
    # Given two workers' watches: one clean, one that saw a key in a log line and logged a prompt in full
    clean = LeakWatch({"sk-123": "subscription key"})
    clean.scan("response", "ok")
    clean.prompt_sent("a long and quiet harbour at dawn")
    leaky = LeakWatch({"sk-123": "subscription key"})
    leaky.where = "t::leaky"
    leaky.scan("log", "calling upstream with sk-123")
    leaky.prompt_sent("a red fox in deep snow, at dusk")
    leaky.scan("log", "generating a red fox in deep snow, at dusk")
    payloads = [watch_payload(clean, "t::last"), watch_payload(leaky, "t::last")]
    assert execnet.loads(execnet.dumps(payloads)) == payloads
    # When the controller merges them
    verdict = SessionVerdict.merge(payloads)
    # Then the counts are the whole session's and the verdict names the finding and the prompt
    assert verdict.seen == {"response": 1, "log": 2}
    assert len(verdict.prompts) == 2 and verdict.leaked == ["a red fox in deep snow, at dusk"]
    expected = Finding("log", "subscription key", "t::leaky", "calling upstream with <subscription key>")
    assert verdict.findings == [expected]
    failures = verdict.failures()
    assert any("subscription key in t::leaky" in line for line in failures)
    assert any("a red fox" in line for line in failures)
    assert "sk-123" not in "\n".join(failures)  # the verdict never prints the secret itself


def test_a_clean_session_has_no_failures():
    watch = LeakWatch({"sk-123": "subscription key"})
    watch.scan("response", "ok")
    assert SessionVerdict.merge([watch_payload(watch, "t::last")]).failures() == []
