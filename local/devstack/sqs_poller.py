"""The Lambda SQS event source mapping, locally: poll a queue and invoke a handler as Lambda would.

It reproduces what the worker meets behind ``Type: SQS`` with ``FunctionResponseTypes: [ReportBatchItemFailures]``
(template.yaml), as AWS documents it:

- up to ``maximum_concurrency`` invocations at once (``ScalingConfig.MaximumConcurrency``), each one poller
  thread that receives a batch (``ReceiveMessage``, at most 10 a call, long polling of at most 1 s so ``stop()``
  is prompt) and invokes the handler. The pollers take turns to call ``ReceiveMessage`` (moto's is not atomic:
  see ``_Turn``); the invocations run concurrently. Without a batching window, the poller whose turn it is
  receives for the idle pollers queued behind it too (up to 10 messages a call) and leaves their batches where
  they take them without a call of their own, as Lambda's pollers fetch for the whole mapping; ``stop()`` makes
  any batch left untaken visible again at once;
- ``batch_size`` / ``batching_window_s`` (``BatchSize`` / ``MaximumBatchingWindowInSeconds``): with a window,
  receiving goes on until the batch is full, the window has elapsed since the first record, or the event nears
  Lambda's 6 MB invoke payload; without one, one ``ReceiveMessage`` makes the batch;
- the event is a genuine SQS event (``sam local generate-event sqs receive-message``, kept in
  ``events/sqs_receive_message.json``); the context is ``devstack.lambda_context.make_context``;
- a handler still running after ``function_timeout_s`` has timed out: the invocation failed (the thread is
  abandoned, not killed: Python cannot kill it; in Lambda the environment would be reset);
- the partial batch response decides which records are deleted (``DeleteMessageBatch``): every record except
  those listed in ``batchItemFailures``. ``None``, ``{}``, a missing, null or empty list: all succeeded. An
  item whose ``itemIdentifier`` is missing, null, empty or not a message id of the batch, a response that is
  not a JSON object or not JSON-serialisable, the handler raising, or a timeout: the whole batch failed and
  nothing is deleted;
- failed records are left alone: they come back after their visibility timeout (or whatever the handler set with
  ``ChangeMessageVisibility``), and the queue's ``RedrivePolicy`` moves them to the DLQ after
  ``maxReceiveCount`` receives. Nothing here deletes or moves a failed message.

Like ``CreateEventSourceMapping``, ``start()`` refuses a function timeout longer than the queue's visibility
timeout, a batch over 10 without a batching window, and values outside AWS's ranges. Sub-second timeouts and
windows are accepted (AWS wants whole seconds) so tests stay fast.

One line per invocation goes to stderr (function, records, failures, outcome, milliseconds); never a body.
Development tooling only: nothing here is deployed.
"""

from __future__ import annotations

import base64
import collections
import functools
import json
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from devstack.lambda_context import make_context

LOG_PREFIX = "[sqs-esm]"
RECEIVE_PAGE_MAX = 10  # ReceiveMessage's MaxNumberOfMessages ceiling
DELETE_BATCH_MAX = 10  # DeleteMessageBatch's entries ceiling
INVOKE_PAYLOAD_MAX_BYTES = 6 * 1024 * 1024  # Lambda's synchronous invoke payload
SHORT_POLL_PAUSE_S = 0.05  # between empty short polls (poll_wait_s=0, or the end of a batching window)
RECORD_OVERHEAD_BYTES = 1024  # the event's own keys, ids, receipt handle and attributes around each body
EVENT_SOURCE = "aws:sqs"
# The attribute order of a real event (and of `sam local generate-event sqs receive-message`); others follow.
STANDARD_ATTRIBUTES = ("ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp")

Handler = Callable[[dict[str, Any], Any], Any]


# ---------------------------------------------------------------------------------------------------- the event
def _base64(value: bytes | bytearray | str) -> str:
    """A binary value as the event carries it: base64 text (boto3 hands it over decoded, as bytes)."""
    if isinstance(value, str):  # already the wire form
        return value
    return base64.b64encode(bytes(value)).decode("ascii")


def _event_message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    attribute: dict[str, Any] = {}
    if value.get("StringValue") is not None:
        attribute["stringValue"] = value["StringValue"]
    if value.get("BinaryValue") is not None:
        attribute["binaryValue"] = _base64(value["BinaryValue"])
    attribute["stringListValues"] = list(value.get("StringListValues") or [])
    attribute["binaryListValues"] = [_base64(item) for item in value.get("BinaryListValues") or []]
    attribute["dataType"] = value["DataType"]
    return attribute


def sqs_record(message: Mapping[str, Any], *, event_source_arn: str, region: str) -> dict[str, Any]:
    """One record of a Lambda SQS event from one message of a ``ReceiveMessage`` answer (boto3's shape)."""
    returned = dict(message.get("Attributes") or {})
    attributes = {name: returned.pop(name) for name in STANDARD_ATTRIBUTES if name in returned}
    attributes.update(returned)  # MessageGroupId, SequenceNumber, AWSTraceHeader, ... when SQS returned them
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": {
            name: _event_message_attribute(value) for name, value in (message.get("MessageAttributes") or {}).items()
        },
        "md5OfBody": message["MD5OfBody"],
    }
    if message.get("MD5OfMessageAttributes"):  # present in real events only when the message has attributes
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    record["eventSource"] = EVENT_SOURCE
    record["eventSourceARN"] = event_source_arn
    record["awsRegion"] = region
    return record


def sqs_event(messages: Iterable[Mapping[str, Any]], *, event_source_arn: str, region: str) -> dict[str, Any]:
    """The event Lambda passes to a function for these received messages."""
    return {"Records": [sqs_record(m, event_source_arn=event_source_arn, region=region) for m in messages]}


# ---------------------------------------------------------------------------------------------------- the response
class InvalidBatchResponse(ValueError):
    """The function's answer makes Lambda treat the whole batch as failed."""


def parse_batch_item_failures(response: Any, message_ids: Iterable[str]) -> frozenset[str]:
    """The message ids the function reported as failed; raise ``InvalidBatchResponse`` when the WHOLE batch failed.

    The answer goes through JSON first, as the runtime sends it (a value JSON cannot carry is a
    ``Runtime.MarshalError``: the invocation failed).
    """
    try:
        document = json.loads(json.dumps(response))
    except (TypeError, ValueError) as exc:
        raise InvalidBatchResponse(f"not JSON-serialisable ({type(exc).__name__})") from None
    if document is None:
        return frozenset()
    if not isinstance(document, dict):
        raise InvalidBatchResponse(f"a JSON {type(document).__name__} is not a batch response")
    failures = document.get("batchItemFailures")
    if failures is None:
        return frozenset()
    if not isinstance(failures, list):
        raise InvalidBatchResponse(f"batchItemFailures is a {type(failures).__name__}, not a list")
    known = set(message_ids)
    failed: set[str] = set()
    for item in failures:
        if not isinstance(item, dict):
            raise InvalidBatchResponse(f"a batchItemFailures item is a {type(item).__name__}, not an object")
        if "itemIdentifier" not in item:
            raise InvalidBatchResponse("a batchItemFailures item has no itemIdentifier")
        identifier = item["itemIdentifier"]
        if identifier is None or identifier == "":
            raise InvalidBatchResponse("a batchItemFailures item has a null or empty itemIdentifier")
        if not isinstance(identifier, str) or identifier not in known:
            raise InvalidBatchResponse("an itemIdentifier is not a message id of the batch")
        failed.add(identifier)
    return frozenset(failed)


# ---------------------------------------------------------------------------------------------------- the mapping
class _Turn:
    """A first-come, first-served turn to call ReceiveMessage, shared by the pollers of one mapping.

    moto's ReceiveMessage is not atomic: two concurrent calls on one queue can return the same message. The pollers
    of one mapping therefore take turns to call it (the invocations still run concurrently); SQS itself needs no
    such thing. First come, first served, so an idle poller's back-to-back long polls cannot starve a poller that
    is filling a batch (a plain Lock is not fair); a waiter gives up when ``give_up()`` becomes true.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = False
        self._waiting: collections.deque[threading.Event] = collections.deque()

    def acquire(self, give_up: Callable[[], bool]) -> bool:
        with self._lock:
            if not self._busy:
                self._busy = True
                return True
            handed_over = threading.Event()
            self._waiting.append(handed_over)
        while not handed_over.wait(0.05):
            if give_up():
                with self._lock:
                    if handed_over.is_set():  # handed over in the meantime: ours after all
                        return True
                    self._waiting.remove(handed_over)
                    return False
        return True

    @property
    def waiting(self) -> int:
        """Pollers queued for the turn now."""
        return len(self._waiting)

    def release(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()  # straight to the next waiter: the turn stays busy
            else:
                self._busy = False


@dataclass
class _Invocation:
    done: threading.Event = field(default_factory=threading.Event)
    response: Any = None
    error: BaseException | None = None


class EventSourceMapping:
    """Poll ``queue_url`` and invoke ``handler(event, context)`` like a Lambda SQS event source mapping.

    Give either ``sqs_client_factory`` (called once per poller thread, plus once in ``start``: boto3 clients are
    not shared across threads here) or ``endpoint_url`` (a moto server; dummy credentials).
    Counters (read them any time): ``invocations``, ``records_delivered``, ``records_failed`` (not deleted
    after an invocation), ``records_deleted``, ``max_concurrent_invocations``, ``errors`` (the handler raised),
    ``timeouts``, ``invalid_responses``, ``poll_errors``, ``delete_errors``.
    """

    def __init__(
        self,
        queue_url: str,
        handler: Handler,
        *,
        sqs_client_factory: Callable[[], Any] | None = None,
        endpoint_url: str | None = None,
        batch_size: int = 10,
        batching_window_s: float = 0,
        maximum_concurrency: int = 2,
        function_timeout_s: float = 60,
        function_name: str = "WorkerFunction",
        queue_arn: str | None = None,
        region: str = "us-east-1",
        poll_wait_s: int = 1,
        log_stream: TextIO | None = None,
    ) -> None:
        if (sqs_client_factory is None) == (endpoint_url is None):
            raise ValueError("give exactly one of sqs_client_factory and endpoint_url")
        if not 1 <= batch_size <= 10_000:
            raise ValueError(f"batch_size must be 1-10000 (standard queue), got {batch_size!r}")
        if not 0 <= batching_window_s <= 300:
            raise ValueError(f"batching_window_s must be 0-300, got {batching_window_s!r}")
        if batch_size > RECEIVE_PAGE_MAX and batching_window_s <= 0:
            raise ValueError("AWS requires a batching window (MaximumBatchingWindowInSeconds >= 1) for batch_size > 10")
        if not 2 <= maximum_concurrency <= 1000:
            raise ValueError(f"maximum_concurrency must be 2-1000 (ScalingConfig), got {maximum_concurrency!r}")
        if not 0 < function_timeout_s <= 900:
            raise ValueError(f"function_timeout_s must be in (0, 900], got {function_timeout_s!r}")
        if poll_wait_s not in (0, 1):
            raise ValueError("poll_wait_s must be 0 or 1 (seconds of ReceiveMessage long polling), so stop() is prompt")
        self.queue_url = queue_url
        self.handler = handler
        self.batch_size = batch_size
        self.batching_window_s = float(batching_window_s)
        self.maximum_concurrency = maximum_concurrency
        self.function_timeout_s = float(function_timeout_s)
        self.function_name = function_name
        self.queue_arn = queue_arn
        self.region = region
        self.poll_wait_s = poll_wait_s
        self._client_factory = sqs_client_factory or self._endpoint_client_factory(endpoint_url or "", region)
        self._log_stream = log_stream
        self._log_lock = threading.Lock()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._receive_turn = _Turn()
        self._received_for_others: collections.deque[dict[str, Any]] = collections.deque()  # taken under the turn
        self._threads: list[threading.Thread] = []
        self._in_flight = 0
        self._last_poll_error: str | None = None
        self.invocations = 0
        self.records_delivered = 0
        self.records_failed = 0
        self.records_deleted = 0
        self._deletions: list[threading.Thread] = []
        self.max_concurrent_invocations = 0
        self.errors = 0
        self.timeouts = 0
        self.invalid_responses = 0
        self.poll_errors = 0
        self.delete_errors = 0

    @staticmethod
    def _endpoint_client_factory(endpoint_url: str, region: str) -> Callable[[], Any]:
        """A client per call (one per poller thread: each long-polls on its own connections), all from one boto3
        session (``start`` and ``stop`` make them, on the calling thread): a session of its own costs a client
        ~120 ms of CPU (the endpoint rules and the service model loaded again), a shared one ~6 ms."""
        import boto3
        from botocore.config import Config

        session = boto3.session.Session()

        def factory() -> Any:
            return session.client(
                "sqs",
                endpoint_url=endpoint_url,
                region_name=region,
                aws_access_key_id="local",
                aws_secret_access_key="local",  # noqa: S106 - moto's dummy credentials
                config=Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard", "max_attempts": 3}),
            )

        return factory

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> EventSourceMapping:
        """Check the queue like CreateEventSourceMapping does, then start the pollers."""
        if self._threads:
            raise RuntimeError("the event source mapping is already running")
        client = self._client_factory()
        attributes = client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["All"])["Attributes"]
        self.queue_arn = self.queue_arn or attributes["QueueArn"]
        visibility_timeout_s = int(attributes.get("VisibilityTimeout", 30))
        if self.function_timeout_s > visibility_timeout_s:
            raise ValueError(
                f"Queue visibility timeout: {visibility_timeout_s} seconds is less than Function timeout: "
                f"{self.function_timeout_s:g} seconds (AWS refuses this event source mapping)"
            )
        if attributes.get("FifoQueue") == "true" and self.batch_size > RECEIVE_PAGE_MAX:
            raise ValueError("a FIFO queue allows batch_size 1-10")
        self._stopping.clear()
        clients = [client] + [self._client_factory() for _ in range(self.maximum_concurrency - 1)]
        self._threads = [
            threading.Thread(
                target=self._poll_loop, args=(sqs,), name=f"sqs-esm-{self.function_name}-{index}", daemon=True
            )
            for index, sqs in enumerate(clients)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop polling; let in-flight invocations finish (and their deletes) within ``timeout_s``.

        The default bound is one function timeout plus a poll and a margin. Returns whether every poller ended.
        """
        self._stopping.set()
        bound = self.function_timeout_s + self.poll_wait_s + 5 if timeout_s is None else timeout_s
        deadline = time.monotonic() + bound
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._return_untaken()
        with self._lock:
            deletions = list(self._deletions)
        for thread in deletions:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [thread for thread in self._threads if thread.is_alive()]
        self._threads = alive
        if alive:
            self._log(f"{self.function_name}: {len(alive)} poller(s) still busy after {bound:g} s")
        return not alive

    def __enter__(self) -> EventSourceMapping:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    @property
    def in_flight(self) -> int:
        """Invocations running now."""
        return self._in_flight

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "invocations": self.invocations,
                "records_delivered": self.records_delivered,
                "records_failed": self.records_failed,
                "records_deleted": self.records_deleted,
                "max_concurrent_invocations": self.max_concurrent_invocations,
                "errors": self.errors,
                "timeouts": self.timeouts,
                "invalid_responses": self.invalid_responses,
                "poll_errors": self.poll_errors,
                "delete_errors": self.delete_errors,
            }

    # -- polling -----------------------------------------------------------------------------------

    def _poll_loop(self, sqs: Any) -> None:
        while not self._stopping.is_set():
            try:
                messages = self._receive_batch(sqs)
                if messages:
                    self._invoke(sqs, messages)
            except Exception:  # noqa: BLE001 - a poller must outlive a bug in one batch, as Lambda's does
                with self._lock:
                    self.poll_errors += 1
                self._log(f"{self.function_name}: poller error:\n{traceback.format_exc().rstrip()}")
                self._stopping.wait(1.0)

    def _receive_batch(self, sqs: Any) -> list[dict[str, Any]]:
        """Receive one batch: a single long poll, or, with a batching window, until full / window / payload."""
        batch: list[dict[str, Any]] = []
        payload_bytes = 0
        window_ends: float | None = None
        while len(batch) < self.batch_size and payload_bytes < INVOKE_PAYLOAD_MAX_BYTES:
            if self._stopping.is_set():
                break  # invoke what is already in flight (invisible), receive no more
            if not batch:
                wait_s = self.poll_wait_s
            elif window_ends is None:
                break  # no batching window: one ReceiveMessage makes the batch
            else:
                remaining_s = window_ends - time.monotonic()
                if remaining_s <= 0:
                    break
                wait_s = self.poll_wait_s if remaining_s >= self.poll_wait_s else 0
            if not self._receive_turn.acquire(give_up=functools.partial(self._give_up_turn, window_ends)):
                break  # stopping, or the window ended while another poller was receiving: invoke what we have
            try:
                answer = self._receive_page(sqs, self.batch_size - len(batch), wait_s)
            except Exception as exc:  # noqa: BLE001 - Lambda's poller backs off and retries on any error
                self._poll_failed(exc)
                answer = None
            finally:
                self._receive_turn.release()
            if answer is None:
                if not batch:
                    self._stopping.wait(1.0)  # back off, then the caller polls again
                break
            self._last_poll_error = None
            page = answer.get("Messages") or []
            if page and not batch and self.batching_window_s > 0:
                window_ends = time.monotonic() + self.batching_window_s
            batch.extend(page)
            payload_bytes += sum(len(m.get("Body", "").encode("utf-8")) + RECORD_OVERHEAD_BYTES for m in page)
            if not page and wait_s == 0:  # a short poll found nothing: do not spin
                pause_s = SHORT_POLL_PAUSE_S if window_ends is None else window_ends - time.monotonic()
                self._stopping.wait(min(SHORT_POLL_PAUSE_S, max(0.0, pause_s)))
            if not batch:
                return batch  # an empty poll: the caller loops (and notices stop())
        return batch

    def _receive_page(self, sqs: Any, wanted: int, wait_s: int) -> dict[str, Any]:
        """Up to ``wanted`` messages, holding the turn: first those received earlier for this poller's turn, else
        one ``ReceiveMessage``; without a batching window it also asks for the pollers queued for the turn (each
        wants a batch) and keeps what is beyond ``wanted`` for them."""
        if self._received_for_others:
            page = [self._received_for_others.popleft() for _ in range(min(wanted, len(self._received_for_others)))]
            return {"Messages": page}
        asked = wanted
        if self.batching_window_s <= 0:
            asked = wanted + self.batch_size * self._receive_turn.waiting
        answer = sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=min(RECEIVE_PAGE_MAX, asked),
            WaitTimeSeconds=wait_s,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        page = answer.get("Messages") or []
        self._received_for_others.extend(page[wanted:])
        return {**answer, "Messages": page[:wanted]}

    def _return_untaken(self) -> None:
        """Make the messages received for pollers that stopped before taking them visible again (as a poller that
        is shut down does): they were never invoked, so nothing waits out a visibility timeout for them."""
        untaken = []
        while self._received_for_others:
            untaken.append(self._received_for_others.popleft())
        if not untaken:
            return
        try:
            sqs = self._client_factory()
            for start in range(0, len(untaken), DELETE_BATCH_MAX):
                entries = [
                    {"Id": str(number), "ReceiptHandle": message["ReceiptHandle"], "VisibilityTimeout": 0}
                    for number, message in enumerate(untaken[start : start + DELETE_BATCH_MAX])
                ]
                sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)
        except Exception as exc:  # noqa: BLE001 - they come back after their visibility timeout anyway
            self._log(f"{self.function_name}: could not return {len(untaken)} untaken message(s): {exc}")

    def _give_up_turn(self, window_ends: float | None) -> bool:
        return self._stopping.is_set() or (window_ends is not None and time.monotonic() >= window_ends)

    def _poll_failed(self, exc: BaseException) -> None:
        with self._lock:
            self.poll_errors += 1
        if self._stopping.is_set():
            return  # the stack is shutting down: a poll cut short is expected, not an error to report
        summary = f"{type(exc).__name__}: {exc}"
        if summary != self._last_poll_error:  # one line per distinct error, not one per retry
            self._last_poll_error = summary
            self._log(f"{self.function_name}: ReceiveMessage failed: {summary}")

    # -- invoking ----------------------------------------------------------------------------------

    def _invoke(self, sqs: Any, messages: Sequence[Mapping[str, Any]]) -> None:
        assert self.queue_arn is not None
        event = sqs_event(messages, event_source_arn=self.queue_arn, region=self.region)
        records = event["Records"]
        message_ids = [record["messageId"] for record in records]
        context = make_context(self.function_name, self.function_timeout_s, region=self.region)
        invocation = _Invocation()
        with self._lock:
            self.invocations += 1
            self.records_delivered += len(records)
            self._in_flight += 1
            self.max_concurrent_invocations = max(self.max_concurrent_invocations, self._in_flight)
        started = time.monotonic()
        try:
            threading.Thread(
                target=self._run_handler,
                args=(event, context, invocation),
                name=f"{self.function_name}-{context.aws_request_id[:8]}",
                daemon=True,
            ).start()
            finished = invocation.done.wait(self.function_timeout_s)
        finally:
            with self._lock:
                self._in_flight -= 1
        elapsed_ms = (time.monotonic() - started) * 1000

        failed: frozenset[str] | set[str]
        if not finished:
            outcome, failed = f"timeout after {self.function_timeout_s:g} s", set(message_ids)
            with self._lock:
                self.timeouts += 1
        elif invocation.error is not None:
            # A function run in a child process (devstack.runtime) names Lambda's errorType (Sandbox.Timedout, ...).
            kind = getattr(invocation.error, "error_type", None) or type(invocation.error).__name__
            outcome, failed = f"error {kind}", set(message_ids)
            with self._lock:
                self.errors += 1
        else:
            try:
                failed = parse_batch_item_failures(invocation.response, message_ids)
                outcome = "partial" if failed else "ok"
            except InvalidBatchResponse as exc:
                outcome, failed = f"invalid response: {exc}", set(message_ids)
                with self._lock:
                    self.invalid_responses += 1

        to_delete = [record for record in records if record["messageId"] not in failed]

        def settle() -> None:
            deleted = self._delete(sqs, to_delete)
            with self._lock:
                self.records_failed += len(records) - len(to_delete)
                self.records_deleted += deleted
            self._log(
                f"{self.function_name}: {len(records)} record(s), {len(records) - len(to_delete)} failed, "
                f"{deleted} deleted, {outcome}, {elapsed_ms:.0f} ms"
            )

        # Lambda's pollers delete a batch's messages while the concurrency slot takes the next batch: the
        # deletion is not on the path to the next invocation. stop() waits for the pending deletions.
        deletion = threading.Thread(target=settle, name=f"{self.function_name}-delete", daemon=True)
        with self._lock:
            self._deletions = [thread for thread in self._deletions if thread.is_alive()] + [deletion]
        deletion.start()

    def _run_handler(self, event: dict[str, Any], context: Any, invocation: _Invocation) -> None:
        try:
            invocation.response = self.handler(event, context)
        except BaseException as exc:  # noqa: BLE001 - any raise (SystemExit included) fails the invocation
            invocation.error = exc
        finally:
            invocation.done.set()

    def _delete(self, sqs: Any, records: Sequence[Mapping[str, Any]]) -> int:
        deleted = 0
        for start in range(0, len(records), DELETE_BATCH_MAX):
            chunk = records[start : start + DELETE_BATCH_MAX]
            entries = [{"Id": str(index), "ReceiptHandle": r["receiptHandle"]} for index, r in enumerate(chunk)]
            try:
                answer = sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except Exception as exc:  # noqa: BLE001 - the records simply come back, as when Lambda's delete fails
                with self._lock:
                    self.delete_errors += len(chunk)
                self._log(f"{self.function_name}: DeleteMessageBatch failed: {type(exc).__name__}: {exc}")
                continue
            deleted += len(answer.get("Successful") or [])
            if failed := answer.get("Failed") or []:
                with self._lock:
                    self.delete_errors += len(failed)
                codes = sorted({str(entry.get("Code")) for entry in failed})
                self._log(f"{self.function_name}: {len(failed)} record(s) not deleted: {', '.join(codes)}")
        return deleted

    # -- logging -----------------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        stream = self._log_stream or sys.stderr
        with self._log_lock:
            print(f"{LOG_PREFIX} {message}", file=stream, flush=True)
