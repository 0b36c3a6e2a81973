"""The local SQS event source mapping against a real (loopback) moto server, with fake handlers.

Every queue is new (a unique name) on one moto server for the module; queues that must redeliver use a 1 s
visibility timeout (moto counts it in whole seconds), and every wait is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from devstack.aws import LocalAws
from devstack.sqs_poller import EventSourceMapping, InvalidBatchResponse, parse_batch_item_failures
from support.polling import eventually

SAM_EVENT = Path(__file__).resolve().parents[2] / "events" / "sqs_receive_message.json"


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def aws() -> Iterator[LocalAws]:
    local = LocalAws().start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def sqs(aws: LocalAws) -> Any:
    return aws.client("sqs")


def new_queue(sqs: Any, *, visibility_timeout_s: int = 1, attributes: dict[str, str] | None = None) -> str:
    name = f"q-{uuid.uuid4().hex[:12]}"
    attrs = {"VisibilityTimeout": str(visibility_timeout_s), **(attributes or {})}
    return str(sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"])


def queue_arn(sqs: Any, url: str) -> str:
    return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


def send(sqs: Any, url: str, *bodies: str) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies[start : start + 10])]
        answer = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        assert not answer.get("Failed")
        ids.extend(entry["MessageId"] for entry in sorted(answer["Successful"], key=lambda e: int(e["Id"])))
    return ids


def messages_left(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


class Recorder:
    """A fake handler: records every delivery, answers with ``behaviour(records)`` (default: all succeeded)."""

    def __init__(self, behaviour: Callable[[list[dict[str, Any]]], Any] | None = None) -> None:
        self.behaviour = behaviour or (lambda records: None)
        self.events: list[dict[str, Any]] = []
        self.contexts: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        with self._lock:
            self.events.append(event)
            self.contexts.append(context)
        return self.behaviour(event["Records"])

    @property
    def batch_sizes(self) -> list[int]:
        with self._lock:
            return [len(event["Records"]) for event in self.events]

    def receive_counts(self) -> dict[str, list[int]]:
        """Body → ApproximateReceiveCount of each delivery, in order."""
        with self._lock:
            counts: dict[str, list[int]] = {}
            for event in self.events:
                for record in event["Records"]:
                    counts.setdefault(record["body"], []).append(int(record["attributes"]["ApproximateReceiveCount"]))
            return {body: sorted(values) for body, values in counts.items()}


def mapping(sqs: Any, url: str, handler: Any, **options: Any) -> EventSourceMapping:
    options.setdefault("function_timeout_s", 1)
    # Short polls (SHORT_POLL_PAUSE_S apart) unless a test asks for long ones: stopping a long-polling mapping
    # waits out its poll, up to 1 s per test. Long polling is the local stack's own (the integration suite) and
    # test_stop_is_prompt_when_idle's.
    options.setdefault("poll_wait_s", 0)
    options.setdefault("log_stream", io.StringIO())
    return EventSourceMapping(url, handler, sqs_client_factory=lambda: sqs, **options)


def failures(*message_ids: str) -> dict[str, Any]:
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in message_ids]}


# ---------------------------------------------------------------------------------------------------- the event
def test_the_event_has_the_keys_of_sam_generate_event(sqs: Any) -> None:
    # Given a queue with the body of the SAM CLI's sample event, and the SAM CLI's event
    sam_record = json.loads(SAM_EVENT.read_text())["Records"][0]
    url = new_queue(sqs, visibility_timeout_s=5)
    [message_id] = send(sqs, url, sam_record["body"])
    recorder = Recorder()

    # When the mapping delivers it
    with mapping(sqs, url, recorder, function_timeout_s=3, function_name="WorkerFunction") as esm:
        eventually(lambda: esm.records_deleted == 1, 5, "the delivery")

    # Then the event has exactly the SAM event's keys, in its order, with SQS's values
    [event] = recorder.events
    assert list(event) == ["Records"]
    [record] = event["Records"]
    assert list(record) == list(sam_record)
    assert list(record["attributes"]) == list(sam_record["attributes"])
    assert all(isinstance(value, str) for value in record["attributes"].values())
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["messageId"] == message_id
    assert record["body"] == sam_record["body"]
    assert record["md5OfBody"] == sam_record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()
    assert record["messageAttributes"] == {}
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == queue_arn(sqs, url)
    assert record["awsRegion"] == "us-east-1"
    # and the context is a Lambda context of that function and timeout
    [context] = recorder.contexts
    assert context.function_name == "WorkerFunction"
    assert context.invoked_function_arn.endswith(":function:WorkerFunction")
    assert context.get_remaining_time_in_millis() <= 3000


def test_message_attributes_are_converted_like_lambda(sqs: Any) -> None:
    # Given a message with string, number and binary attributes
    url = new_queue(sqs, visibility_timeout_s=5)
    sqs.send_message(
        QueueUrl=url,
        MessageBody="{}",
        MessageAttributes={
            "tenant": {"DataType": "String", "StringValue": "acme"},
            "priority": {"DataType": "Number", "StringValue": "7"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
        },
    )
    recorder = Recorder()

    # When the mapping delivers it
    with mapping(sqs, url, recorder) as esm:
        eventually(lambda: esm.records_deleted == 1, 5, "the delivery")

    # Then the attributes have the event's camelCase shape, binary values base64 text
    [record] = recorder.events[0]["Records"]
    assert record["messageAttributes"] == {
        "tenant": {"stringValue": "acme", "stringListValues": [], "binaryListValues": [], "dataType": "String"},
        "priority": {"stringValue": "7", "stringListValues": [], "binaryListValues": [], "dataType": "Number"},
        "blob": {
            "binaryValue": base64.b64encode(b"\x00\x01\xff").decode(),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Binary",
        },
    }
    assert len(record["md5OfMessageAttributes"]) == 32
    assert list(record)[-3:] == ["eventSource", "eventSourceARN", "awsRegion"]


# ---------------------------------------------------------------------------------------------------- batching
def test_batches_never_exceed_the_batch_size(sqs: Any) -> None:
    # Given 8 messages and a batch size of 3
    url = new_queue(sqs, visibility_timeout_s=5)
    send(sqs, url, *(f"m{i}" for i in range(8)))
    recorder = Recorder()

    # When the mapping drains the queue
    with mapping(sqs, url, recorder, batch_size=3) as esm:
        eventually(lambda: esm.records_deleted == 8, 6, "8 deletions")

    # Then no batch had more than 3 records, and full batches were used
    assert max(recorder.batch_sizes) == 3
    assert sum(recorder.batch_sizes) == 8
    assert sorted(recorder.receive_counts()) == sorted(f"m{i}" for i in range(8))
    assert messages_left(sqs, url) == 0


def test_a_batch_over_ten_is_gathered_across_receives_within_the_window(sqs: Any) -> None:
    # Given 25 messages, a batch size of 25 and a 1 s batching window
    url = new_queue(sqs, visibility_timeout_s=10)
    send(sqs, url, *(f"m{i}" for i in range(25)))
    recorder = Recorder()

    # When the mapping drains the queue
    # Long polls within the window, as the local stack polls (the other tests here short-poll)
    with mapping(sqs, url, recorder, batch_size=25, batching_window_s=1, poll_wait_s=1) as esm:
        eventually(lambda: esm.records_deleted == 25, 8, "25 deletions")

    # Then at least one batch was larger than one ReceiveMessage can return (10)
    assert sum(recorder.batch_sizes) == 25
    assert max(recorder.batch_sizes) > 10
    assert esm.invocations <= 2


def test_aws_rejected_configurations_are_refused(sqs: Any) -> None:
    # Given / When / Then: what CreateEventSourceMapping refuses is refused here too
    url = new_queue(sqs, visibility_timeout_s=1)
    with pytest.raises(ValueError, match="batching window"):
        mapping(sqs, url, Recorder(), batch_size=11)
    with pytest.raises(ValueError, match="maximum_concurrency"):
        mapping(sqs, url, Recorder(), maximum_concurrency=1)
    with pytest.raises(ValueError, match="exactly one"):
        EventSourceMapping(url, Recorder())
    with pytest.raises(ValueError, match="visibility timeout"):
        mapping(sqs, url, Recorder(), function_timeout_s=2).start()


# ---------------------------------------------------------------------------------------------------- concurrency
def test_concurrent_invocations_never_exceed_maximum_concurrency(sqs: Any) -> None:
    # Given 12 messages and a handler that sleeps 0.2 s and counts how many invocations are inside it
    url = new_queue(sqs, visibility_timeout_s=5)
    send(sqs, url, *(f"m{i}" for i in range(12)))
    lock = threading.Lock()
    inside = 0
    peak = 0

    def slow(records: list[dict[str, Any]]) -> None:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        time.sleep(0.2)
        with lock:
            inside -= 1

    # When a mapping with maximum_concurrency 3 and batch size 1 drains the queue
    with mapping(sqs, url, Recorder(slow), batch_size=1, maximum_concurrency=3) as esm:
        eventually(lambda: esm.records_deleted == 12, 8, "12 deletions")

    # Then at most 3 invocations ever ran at once, and they did run in parallel
    assert 2 <= peak <= 3
    assert esm.max_concurrent_invocations <= 3
    assert esm.invocations == 12


# ---------------------------------------------------------------------------------------------------- failures
def test_only_reported_failures_come_back_with_an_incremented_receive_count(sqs: Any) -> None:
    # Given two messages that fail on their first delivery and two that succeed
    url = new_queue(sqs, visibility_timeout_s=1)
    send(sqs, url, "ok-0", "fail-0", "ok-1", "fail-1")

    def fail_first_time(records: list[dict[str, Any]]) -> dict[str, Any]:
        return failures(
            *(
                r["messageId"]
                for r in records
                if r["body"].startswith("fail") and r["attributes"]["ApproximateReceiveCount"] == "1"
            )
        )

    recorder = Recorder(fail_first_time)
    log = io.StringIO()

    # When the mapping drains the queue
    with mapping(sqs, url, recorder, log_stream=log) as esm:
        eventually(lambda: esm.records_deleted == 4, 8, "4 deletions")

    # Then only the failed ones came back, once, with ApproximateReceiveCount 2
    assert recorder.receive_counts() == {"ok-0": [1], "ok-1": [1], "fail-0": [1, 2], "fail-1": [1, 2]}
    assert esm.records_failed == 2
    assert esm.records_delivered == 6
    assert messages_left(sqs, url) == 0
    # and every invocation logged one line, naming the function, without a body
    lines = log.getvalue().splitlines()
    assert len(lines) == esm.invocations
    assert all("WorkerFunction" in line and "ms" in line for line in lines)
    assert not any(body in log.getvalue() for body in ("ok-0", "fail-0", "ok-1", "fail-1"))


def test_a_visibility_set_by_the_handler_decides_when_a_failure_comes_back(sqs: Any) -> None:
    # Given a queue with a 30 s visibility timeout and a handler that fails a message after making it visible now
    url = new_queue(sqs, visibility_timeout_s=30)
    send(sqs, url, "retry-now")

    def fail_and_release(records: list[dict[str, Any]]) -> dict[str, Any] | None:
        first = [r for r in records if r["attributes"]["ApproximateReceiveCount"] == "1"]
        for record in first:
            sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=record["receiptHandle"], VisibilityTimeout=0)
        return failures(*(r["messageId"] for r in first)) if first else None

    recorder = Recorder(fail_and_release)

    # When the mapping delivers it
    started = time.monotonic()
    with mapping(sqs, url, recorder) as esm:
        eventually(lambda: esm.records_deleted == 1, 5, "the second delivery")

    # Then it came back long before the queue's 30 s: the mapping kept the handler's visibility
    assert recorder.receive_counts() == {"retry-now": [1, 2]}
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("misbehaviour", "counter"),
    [("unknown_identifier", "invalid_responses"), ("raises", "errors"), ("times_out", "timeouts")],
)
def test_a_whole_batch_failure_redelivers_every_record(sqs: Any, misbehaviour: str, counter: str) -> None:
    # Given three messages and a handler that misbehaves on every first delivery, then succeeds
    url = new_queue(sqs, visibility_timeout_s=1)
    send(sqs, url, "a", "b", "c")
    release = threading.Event()

    def misbehave(records: list[dict[str, Any]]) -> Any:
        if any(r["attributes"]["ApproximateReceiveCount"] != "1" for r in records):
            return None
        if misbehaviour == "unknown_identifier":  # lists no real record, yet fails them all
            return failures("00000000-0000-0000-0000-000000000000")
        if misbehaviour == "raises":
            raise RuntimeError("boom")
        release.wait(3)  # past the 0.5 s function timeout; then "succeeds", too late to count
        return None

    recorder = Recorder(misbehave)

    # When the mapping drains the queue
    try:
        with mapping(sqs, url, recorder, function_timeout_s=0.5) as esm:
            eventually(lambda: esm.records_deleted == 3, 8, "3 deletions")
    finally:
        release.set()

    # Then nothing of a misbehaving batch was deleted: every record came back once, with count 2
    assert recorder.receive_counts() == {"a": [1, 2], "b": [1, 2], "c": [1, 2]}
    assert esm.records_failed == 3
    assert getattr(esm, counter) >= 1
    assert messages_left(sqs, url) == 0


def test_redrive_moves_a_message_to_the_dlq_after_max_receive_count(sqs: Any) -> None:
    # Given a queue whose RedrivePolicy sends a message to a DLQ after 2 receives, and a handler that always fails
    dlq_url = new_queue(sqs, visibility_timeout_s=30)
    redrive = json.dumps({"deadLetterTargetArn": queue_arn(sqs, dlq_url), "maxReceiveCount": "2"})
    url = new_queue(sqs, visibility_timeout_s=1, attributes={"RedrivePolicy": redrive})
    [message_id] = send(sqs, url, "poison")
    recorder = Recorder(lambda records: failures(*(r["messageId"] for r in records)))

    # When the mapping keeps receiving it
    with mapping(sqs, url, recorder):
        moved = eventually(
            lambda: sqs.receive_message(QueueUrl=dlq_url, WaitTimeSeconds=1, AttributeNames=["All"]).get("Messages"),
            8,
            "the poison message on the DLQ",
        )

    # Then the handler saw it exactly twice and SQS moved it to the DLQ, unchanged
    assert recorder.receive_counts() == {"poison": [1, 2]}
    [dead] = moved
    assert (dead["MessageId"], dead["Body"]) == (message_id, "poison")
    assert messages_left(sqs, url) == 0


# ---------------------------------------------------------------------------------------------------- stopping
class CountingSqs:
    """The moto client, counting ``ReceiveMessage`` calls and the ``MaxNumberOfMessages`` of each."""

    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs
        self.asked: list[int] = []

    def receive_message(self, **request: Any) -> Any:
        self.asked.append(request["MaxNumberOfMessages"])
        return self._sqs.receive_message(**request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)


def test_a_poller_receives_for_the_pollers_queued_behind_it(sqs: Any) -> None:
    # Given 6 messages, batches of 2 without a batching window, and two pollers queued for the receive turn
    url = new_queue(sqs, visibility_timeout_s=30)
    send(sqs, url, *(f"m{i}" for i in range(6)))
    counting = CountingSqs(sqs)
    esm = mapping(counting, url, Recorder(), batch_size=2, maximum_concurrency=4)
    esm._receive_turn._waiting.extend([threading.Event(), threading.Event()])

    # When the poller holding the turn receives, and then the two queued pollers take their turns
    first = esm._receive_page(counting, 2, 0)
    esm._receive_turn._waiting.clear()
    second, third = esm._receive_page(counting, 2, 0), esm._receive_page(counting, 2, 0)

    # Then one ReceiveMessage asked for all three batches, and each poller got its own two messages
    assert counting.asked == [6]
    batches = [[message["Body"] for message in page["Messages"]] for page in (first, second, third)]
    assert [len(batch) for batch in batches] == [2, 2, 2]
    assert sorted(body for batch in batches for body in batch) == [f"m{i}" for i in range(6)]


def test_with_a_batching_window_a_poller_receives_only_for_itself(sqs: Any) -> None:
    url = new_queue(sqs, visibility_timeout_s=30)
    send(sqs, url, *(f"m{i}" for i in range(6)))
    counting = CountingSqs(sqs)
    esm = mapping(counting, url, Recorder(), batch_size=2, batching_window_s=1, maximum_concurrency=4)
    esm._receive_turn._waiting.extend([threading.Event(), threading.Event()])

    page = esm._receive_page(counting, 2, 0)

    assert counting.asked == [2]
    assert len(page["Messages"]) == 2


def test_stop_makes_batches_received_for_others_visible_at_once(sqs: Any) -> None:
    # Given 4 messages received for pollers that have not taken them (a 30 s visibility timeout)
    url = new_queue(sqs, visibility_timeout_s=30)
    send(sqs, url, *(f"m{i}" for i in range(6)))
    counting = CountingSqs(sqs)
    esm = mapping(counting, url, Recorder(), batch_size=2, maximum_concurrency=4)
    esm._receive_turn._waiting.extend([threading.Event(), threading.Event()])
    esm._receive_page(counting, 2, 0)

    # When the mapping stops
    esm.stop()

    # Then those 4 can be received again now, not after 30 s; the 2 taken stay in flight
    visible = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert int(visible["ApproximateNumberOfMessages"]) == 4
    again = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)["Messages"]
    assert len(again) == 4


def test_stop_is_prompt_when_idle(aws: LocalAws, sqs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a running mapping (its own clients, from the endpoint URL) on an empty queue, its pollers polling
    polling = threading.Event()
    receive_batch = EventSourceMapping._receive_batch

    def receives(self: EventSourceMapping, sqs: Any) -> list[dict[str, Any]]:
        polling.set()
        return receive_batch(self, sqs)

    monkeypatch.setattr(EventSourceMapping, "_receive_batch", receives)
    url = new_queue(sqs, visibility_timeout_s=5)
    esm = EventSourceMapping(
        url,
        Recorder(),
        endpoint_url=aws.endpoint_url,
        maximum_concurrency=4,
        function_timeout_s=1,
        log_stream=io.StringIO(),
    ).start()
    assert polling.wait(10), "no poller started polling"

    # When it is stopped
    started = time.monotonic()
    stopped = esm.stop()

    # Then every poller ended within about one long poll
    assert stopped
    assert not esm.running
    assert time.monotonic() - started < 2.0


def test_stop_lets_an_invocation_in_flight_finish(sqs: Any) -> None:
    # Given an invocation in flight
    url = new_queue(sqs, visibility_timeout_s=5)
    send(sqs, url, "slow")
    esm = mapping(sqs, url, Recorder(lambda records: time.sleep(0.4)), function_timeout_s=2).start()
    eventually(lambda: esm.in_flight == 1, 5, "the invocation")

    # When the mapping is stopped
    stopped = esm.stop()

    # Then the invocation finished and its record was deleted
    assert stopped
    assert esm.records_deleted == 1
    assert messages_left(sqs, url) == 0


# ------------------------------------------------------------------------------------------ the response rules
IDS = ["id-1", "id-2"]


@pytest.mark.parametrize(
    ("response", "failed"),
    [
        (None, set()),
        ({}, set()),
        ({"batchItemFailures": []}, set()),
        ({"batchItemFailures": None}, set()),
        ({"statusCode": 200}, set()),
        (failures("id-2"), {"id-2"}),
        (failures("id-1", "id-2", "id-1"), {"id-1", "id-2"}),
        ({"batchItemFailures": [{"itemIdentifier": "id-1", "extra": True}]}, {"id-1"}),
    ],
)
def test_responses_that_name_the_failed_records(response: Any, failed: set[str]) -> None:
    # Given / When / Then
    assert parse_batch_item_failures(response, IDS) == failed


@pytest.mark.parametrize(
    "response",
    [
        failures(""),
        {"batchItemFailures": [{"itemIdentifier": None}]},
        failures("id-3"),
        failures("id-1", "id-3"),
        {"batchItemFailures": [{"itemidentifier": "id-1"}]},
        {"batchItemFailures": [{}]},
        {"batchItemFailures": [{"itemIdentifier": 1}]},
        {"batchItemFailures": ["id-1"]},
        {"batchItemFailures": {"itemIdentifier": "id-1"}},
        {"batchItemFailures": "id-1"},
        "ok",
        ["id-1"],
        {"batchItemFailures": [{"itemIdentifier": "id-1"}], "when": object()},
    ],
)
def test_responses_that_fail_the_whole_batch(response: Any) -> None:
    # Given / When / Then
    with pytest.raises(InvalidBatchResponse):
        parse_batch_item_failures(response, IDS)
