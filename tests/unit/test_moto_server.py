"""The local moto launcher's direct JSON answers for DynamoDB are the bytes moto's own serializer would write."""

from __future__ import annotations

import copy
import json
import sys
import types
from datetime import UTC, datetime
from typing import Any

import pytest
from devstack import moto_server
from imagegen.adapters.job_rows import RESULT_NAMES, RESULT_PROJECTION
from moto.core.responses import ActionResult
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.responses import DynamoHandler, DynamoResult


def _handler(action: str) -> DynamoHandler:
    handler = DynamoHandler()
    handler._get_action = lambda: action  # type: ignore[method-assign]
    handler.response_headers = {"x-amzn-requestid": "r-1"}
    handler.headers = {"Content-Type": "application/x-amz-json-1.0"}
    return handler


def _both(action: str, result: ActionResult) -> tuple[Any, Any]:
    handler = _handler(action)
    return moto_server.serialized(handler, result), moto_server._original_serialized(handler, result)


def _every_attribute_type() -> dict[str, DynamoType]:
    return {
        "pk": DynamoType({"S": "JOB#job_1"}),
        "count": DynamoType({"N": "1.5"}),
        "blob": DynamoType({"B": "eHk="}),
        "nested": DynamoType({"M": {"list": {"L": [{"S": "a"}, {"NULL": True}, {"BOOL": False}, {"N": "2"}]}}}),
        "strings": DynamoType({"SS": ["a", "b"]}),
        "numbers": DynamoType({"NS": ["1", "2"]}),
        "blobs": DynamoType({"BS": ["eHk="]}),
    }


@pytest.mark.parametrize(
    ("action", "result"),
    [
        ("Query", {"Items": [_every_attribute_type()], "Count": 1, "ScannedCount": 1, "LastEvaluatedKey": None}),
        ("GetItem", {"Item": _every_attribute_type()}),
        ("UpdateItem", {"Attributes": _every_attribute_type(), "ConsumedCapacity": {"TableName": "t"}}),
        ("TransactWriteItems", {"ConsumedCapacity": [], "ItemCollectionMetrics": {}}),
        ("BatchWriteItem", {"ConsumedCapacity": [{"TableName": "t", "CapacityUnits": 1.0}], "UnprocessedItems": {}}),
    ],
)
def test_direct_json_equals_moto_serializer(action: str, result: dict[str, Any]) -> None:
    # Given a data-plane answer with every attribute type (binaries included)
    fast, slow = _both(action, DynamoResult(result))

    # Then the status, headers and decoded body are those moto's serializer writes
    assert fast[0] == slow[0] == 200
    assert fast[1] == slow[1]
    assert json.loads(fast[2]) == json.loads(slow[2])
    assert "null" not in fast[2]


WIRE_ITEM = {
    "pk": {"S": "JOB#job_1"},
    "text": {"S": "null"},
    "nested": {"M": {"note": {"S": "a:null,[null"}, "none": {"NULL": True}, "list": {"L": [{"N": "2"}]}}},
}


@pytest.mark.parametrize(
    ("action", "result"),
    [
        ("Query", {"Items": [WIRE_ITEM], "Count": 1, "ScannedCount": 1}),
        ("Query", {"Items": [WIRE_ITEM], "Count": 1, "ScannedCount": 1, "LastEvaluatedKey": None}),
        ("UpdateItem", {"Attributes": {"pk": {"S": "a"}}, "ConsumedCapacity": {"TableName": "t", "Table": None}}),
    ],
)
def test_a_wire_format_answer_is_written_directly_without_moto_s_none_fields(
    action: str, result: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an answer as moto hands it over (items already in the wire format), some with the text "null" in
    # values and some with fields moto left None
    expected = moto_server._original_serialized(_handler(action), DynamoResult(result))
    monkeypatch.setattr(moto_server, "_original_serialized", lambda *_: pytest.fail("not written directly"))

    # When it is answered
    status, _, body = moto_server.serialized(_handler(action), DynamoResult(result))

    # Then it is written directly, as moto's serializer writes it: the texts kept, the None fields left out
    assert status == 200
    assert json.loads(body) == json.loads(expected[2])
    assert json.loads(body)["Items" if action == "Query" else "Attributes"] == result.get(
        "Items", result.get("Attributes")
    )
    assert "LastEvaluatedKey" not in json.loads(body)
    assert json.loads(body).get("ConsumedCapacity", {}) in ({}, {"TableName": "t"})


def test_answer_that_is_not_plain_json_goes_through_moto_serializer(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an answer carrying a timestamp (which only the shape says how to write)
    calls: list[str] = []
    original = moto_server._original_serialized

    def spy(handler: DynamoHandler, result: ActionResult) -> Any:
        calls.append(handler._get_action())
        return original(handler, result)

    monkeypatch.setattr(moto_server, "_original_serialized", spy)
    stamp = datetime(2026, 11, 29, tzinfo=UTC)
    result = ActionResult({"Attributes": {"pk": {"S": "a"}}, "Stamp": stamp})

    # When it is answered, then moto's serializer writes it
    moto_server.serialized(_handler("UpdateItem"), result)
    assert calls == ["UpdateItem"]


def test_control_plane_answer_goes_through_moto_serializer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = moto_server._original_serialized
    monkeypatch.setattr(
        moto_server, "_original_serialized", lambda h, r: calls.append(h._get_action()) or original(h, r)
    )
    moto_server.serialized(_handler("ListTables"), ActionResult({"TableNames": ["t"]}))
    assert calls == ["ListTables"]


def test_routing_lists_moto_services_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given moto's server, which asks for its service folders on every request
    from moto import backends

    listed: list[int] = []
    original = backends.list_of_moto_modules

    def counting() -> Any:
        listed.append(1)
        return original()

    monkeypatch.setattr(backends, "list_of_moto_modules", counting)
    monkeypatch.setattr(moto_server.DynamoHandler, "serialized", moto_server.DynamoHandler.serialized)
    monkeypatch.setattr(moto_server.Table, "query", moto_server.Table.query)
    monkeypatch.setattr(moto_server.UpdateExpressionParser, "make", moto_server.UpdateExpressionParser.__dict__["make"])
    monkeypatch.setattr(
        moto_server.ConditionExpressionParser,
        "_lex_condition_expression",
        moto_server.ConditionExpressionParser._lex_condition_expression,
    )
    monkeypatch.setattr(
        moto_server.DepthFirstTraverser,
        "traverse_node_recursively",
        moto_server.DepthFirstTraverser.traverse_node_recursively,
    )
    from moto.dynamodb.parsing import validators

    monkeypatch.setattr(validators, "deepcopy", validators.deepcopy)
    from moto.core.base_backend import BackendDict

    monkeypatch.setattr(BackendDict, "__getitem__", BackendDict.__getitem__)
    monkeypatch.setattr(moto_server, "_original_backend_getitem", moto_server._original_backend_getitem)
    for name in ("delete_message", "attributes", "messages"):
        monkeypatch.setattr(moto_server.Queue, name, moto_server.Queue.__dict__[name])
    monkeypatch.setattr(moto_server.SQSBackend, "send_message", moto_server.SQSBackend.send_message)
    monkeypatch.setattr(
        moto_server.SQSBackend,
        "is_message_valid_based_on_retention_period",
        moto_server.SQSBackend.is_message_valid_based_on_retention_period,
    )
    monkeypatch.setattr(moto_server.DynamoDBBackend, "transact_write_items", moto_server._original_transact)
    for name in moto_server._SERIALIZED:
        if hasattr(moto_server.DynamoDBBackend, name):
            monkeypatch.setattr(moto_server.DynamoDBBackend, name, getattr(moto_server.DynamoDBBackend, name))
    monkeypatch.setattr(sys.modules[moto_server.models_module_name], "copy", copy)

    # When the launcher is installed and routing asks many times
    moto_server.install()
    answers = [backends.list_of_moto_modules() for _ in range(50)]

    # Then the folders were listed once, and every answer holds the services
    assert listed == [1]
    assert all("dynamodb" in answer and "sqs" in answer for answer in answers)


QUERIES: list[dict[str, Any]] = [
    {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": "JOB#b"}}},
    {
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
        "ExpressionAttributeValues": {":pk": {"S": "JOB#b"}, ":p": {"S": "ITEM#"}},
    },
    {
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
        "ExpressionAttributeValues": {":pk": {"S": "JOB#b"}, ":p": {"S": "JOB"}},
    },
    {
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
        "ExpressionAttributeValues": {":pk": {"S": "JOB#b"}, ":p": {"S": "ITEM#"}},
        "Limit": 7,
        "ExclusiveStartKey": {"pk": {"S": "JOB#b"}, "sk": {"S": "ITEM#000012"}},
    },
    {
        "KeyConditionExpression": "pk = :pk AND sk BETWEEN :a AND :b",
        "ExpressionAttributeValues": {":pk": {"S": "JOB#b"}, ":a": {"S": "ITEM#000005"}, ":b": {"S": "ITEM#000009"}},
        "ScanIndexForward": False,
    },
    {
        "KeyConditionExpression": "pk = :pk AND sk > :a",
        "ExpressionAttributeValues": {":pk": {"S": "JOB#b"}, ":a": {"S": "ITEM#000030"}},
        "FilterExpression": "attribute_exists(n)",
    },
    {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": "JOB#missing"}}},
]


def _create_jobs_table(client: Any) -> None:
    """A table keyed as the service's (pk, sk), in the moto that ``client`` reaches."""
    client.create_table(
        TableName="jobs",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk")],
        BillingMode="PAY_PER_REQUEST",
    )


@pytest.mark.parametrize("request_", QUERIES)
def test_partition_query_answers_as_moto_does(request_: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a table of three partitions, one of them with item, job and counter rows
    import boto3
    from moto import mock_aws
    from moto.dynamodb.models.table import Table

    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        _create_jobs_table(client)
        for job in ("a", "b", "c"):
            rows = [f"ITEM#{index:06d}" for index in range(40)] + ["JOB", "JOB#COUNT#0", "JOB#COUNT#1"]
            for number, sort_key in enumerate(rows):
                item = {"pk": {"S": f"JOB#{job}"}, "sk": {"S": sort_key}}
                if number % 3:
                    item["n"] = {"N": str(number)}
                client.put_item(TableName="jobs", Item=item)

        # When the same Query is answered by moto's query and by the launcher's
        monkeypatch.setattr(Table, "query", moto_server._original_query)
        expected = client.query(TableName="jobs", **request_)
        monkeypatch.setattr(Table, "query", moto_server.query)
        answered = client.query(TableName="jobs", **request_)

    # Then the items, counts and the page's end are the same
    for key in ("Items", "Count", "ScannedCount", "LastEvaluatedKey"):
        assert answered.get(key) == expected.get(key), key


@pytest.mark.parametrize(("age_s", "valid"), [(0, True), (59, True), (61, False)])
def test_retention_check_reads_one_attribute(age_s: int, valid: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a queue retaining messages for 60 s, and a message sent age_s ago
    import time

    import boto3
    from moto import mock_aws
    from moto.sqs.models import SQSBackend, sqs_backends

    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        sqs.create_queue(QueueName="q", Attributes={"MessageRetentionPeriod": "60"})
        sqs.send_message(QueueUrl="q", MessageBody="x")
        backend = sqs_backends["123456789012"]["us-east-1"]
        message = backend.get_queue("q")._messages[0]
        message.sent_timestamp = int((time.time() - age_s) * 1000)
        expected = SQSBackend.is_message_valid_based_on_retention_period(backend, "q", message)

        # When the launcher's check runs, the queue's attributes are not computed
        def no_attributes(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("every queue attribute was computed")

        monkeypatch.setattr(SQSBackend, "get_queue_attributes", no_attributes)
        answer = moto_server.is_message_valid_based_on_retention_period(backend, "q", message)

    # Then it answers as moto's own check
    assert answer is expected is valid


def test_a_queue_lists_the_messages_moto_lists() -> None:
    # Given a queue with visible, in-flight and delayed messages
    import boto3
    from moto import mock_aws
    from moto.sqs.models import sqs_backends

    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="q")["QueueUrl"]
        for index in range(12):
            sqs.send_message(QueueUrl=url, MessageBody=str(index), DelaySeconds=60 if index % 4 == 0 else 0)
        sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=5, VisibilityTimeout=60)
        queue = sqs_backends["123456789012"]["us-east-1"].get_queue("q")

        # When the launcher lists the queue's messages, and moto does
        listed = [message.body for message in moto_server.queue_messages(queue)]
        expected = [message.body for message in moto_server._original_queue_messages.fget(queue)]

    # Then both list the same messages in the same order: neither delayed nor in flight
    assert listed == expected
    assert len(listed) == 12 - 3 - 5


def test_an_existing_account_s_backend_is_found_without_the_shared_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given moto's backend dictionary, whose look-up takes a lock shared by every service
    from moto.core import base_backend
    from moto.core.base_backend import BackendDict

    monkeypatch.setattr(BackendDict, "__getitem__", BackendDict.__getitem__)
    created = BackendDict(lambda region, account: object(), "dynamodb")
    first = created["111111111111"]  # the first look-up creates the account's backend (under the lock)

    class Forbidden:
        def __enter__(self) -> None:
            raise AssertionError("the shared backend lock was taken")

        def __exit__(self, *args: object) -> None:
            return None

    # When the launcher is installed and the same account is looked up again, with the lock forbidden
    monkeypatch.setattr(moto_server, "_original_backend_getitem", BackendDict.__getitem__)
    monkeypatch.setattr(BackendDict, "__getitem__", moto_server._existing_backend_first)
    monkeypatch.setattr(base_backend, "backend_lock", Forbidden())

    # Then it is the same backend, found without the lock
    assert created["111111111111"] is first


@pytest.mark.parametrize("fifo", [False, True])
def test_a_send_reads_only_the_fifo_attributes(fifo: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a queue (standard, or FIFO with content-based deduplication) and the launcher's send
    import boto3
    from moto import mock_aws
    from moto.sqs.models import Queue, SQSBackend

    monkeypatch.setattr(Queue, "attributes", property(moto_server.queue_attributes))
    monkeypatch.setattr(SQSBackend, "send_message", moto_server.send_message)
    walked: list[int] = []
    original = Queue.approximate_number_of_messages

    def counted(self: Queue) -> int:
        walked.append(1)
        return original.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(Queue, "approximate_number_of_messages", property(counted))
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        name = "q.fifo" if fifo else "q"
        attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if fifo else {}
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        extra = {"MessageGroupId": "g"} if fifo else {}

        # When the same body is sent twice
        for _ in range(2):
            sqs.send_message(QueueUrl=url, MessageBody="same", **extra)
        sent_walks = len(walked)
        counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]

    # Then no send walked the messages; FIFO deduplicated by content as moto does; the attributes are whole
    assert sent_walks == 0
    assert counts["ApproximateNumberOfMessages"] == ("1" if fifo else "2")
    assert ("ContentBasedDeduplication" in counts) is fifo


def test_a_message_sent_while_another_is_deleted_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a queue whose DeleteMessage has built its new message list and is about to put it in place when a
    # SendMessage arrives (the moment is reached by tracing moto's own lines)
    import sys
    import threading
    import time

    import boto3
    from moto import mock_aws
    from moto.sqs.models import Message, Queue, sqs_backends

    monkeypatch.setattr(Queue, "delete_message", moto_server.queue_delete_message)
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="q")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="first")
        receipt = sqs.receive_message(QueueUrl=url)["Messages"][0]["ReceiptHandle"]
        queue = sqs_backends["123456789012"]["us-east-1"].get_queue("q")
        senders: list[threading.Thread] = []

        def lines(frame: Any, event: str, arg: Any) -> Any:
            source = frame.f_code.co_filename
            if event == "line" and not senders and source.endswith("models.py"):
                import linecache

                if linecache.getline(source, frame.f_lineno).strip() == "self._messages = new_messages":
                    sender = threading.Thread(target=queue.add_message, args=(Message("m-2", "second", {}),))
                    senders.append(sender)
                    sender.start()
                    time.sleep(0.2)  # time to append, unless the delete holds the queue's lock
            return lines

        def calls(frame: Any, event: str, arg: Any) -> Any:
            return lines if frame.f_code.co_name == "delete_message" else None

        # When the delete finishes
        sys.settrace(calls)
        try:
            queue.delete_message(receipt)
        finally:
            sys.settrace(None)
        assert senders, "moto's delete no longer replaces its message list: revisit the launcher's lock"
        senders[0].join(5)

        # Then the message sent meanwhile is in the queue
        assert [message.body for message in queue._messages] == ["second"]


def test_a_receive_racing_another_never_takes_its_message(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a queue of one message, and a receive that has found it visible and is about to mark it received when
    # a second receive arrives (the moment is reached by tracing moto's own lines)
    import sys
    import threading
    import time

    import boto3
    from moto import mock_aws
    from moto.sqs.models import SQSBackend, sqs_backends

    monkeypatch.setattr(SQSBackend, "receive_message", moto_server.receive_message)
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        sqs.create_queue(QueueName="q")
        backend = sqs_backends["123456789012"]["us-east-1"]
        backend.send_message("q", "only")
        second: list[list[Any]] = []
        racers: list[threading.Thread] = []

        def lines(frame: Any, event: str, arg: Any) -> Any:
            source = frame.f_code.co_filename
            if event == "line" and not racers and source.endswith("models.py"):
                import linecache

                if linecache.getline(source, frame.f_lineno).strip().startswith("message.mark_received("):
                    racer = threading.Thread(target=lambda: second.append(backend.receive_message("q", 1, 0, 30)))
                    racers.append(racer)
                    racer.start()
                    time.sleep(0.2)  # time to take the message too, unless the first receive holds the lock
            return lines

        def calls(frame: Any, event: str, arg: Any) -> Any:
            return lines if frame.f_code.co_name == "receive_message" else None

        # When the first receive finishes
        sys.settrace(calls)
        try:
            first = backend.receive_message("q", 1, 0, 30)
        finally:
            sys.settrace(None)
        assert racers, "moto's receive no longer marks messages this way: revisit the launcher's receive lock"
        racers[0].join(5)

    # Then the message went to the first receive only
    assert [message.body for message in first] == ["only"]
    assert second == [[]]


def test_a_long_poll_gets_a_message_sent_while_it_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import boto3
    from moto import mock_aws
    from moto.sqs.models import Queue, SQSBackend

    monkeypatch.setattr(SQSBackend, "receive_message", moto_server.receive_message)
    waiting = threading.Event()  # set once the long poll found nothing and waits for a send
    wait_for_messages = Queue.wait_for_messages

    def waits(self: Any, timeout: float) -> Any:
        waiting.set()
        return wait_for_messages(self, timeout)

    monkeypatch.setattr(Queue, "wait_for_messages", waits)
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="q")["QueueUrl"]
        answers: list[list[dict[str, Any]]] = []
        # Given a long poll of an empty queue, waiting
        poll = threading.Thread(
            target=lambda: answers.append(sqs.receive_message(QueueUrl=url, WaitTimeSeconds=10).get("Messages", []))
        )
        poll.start()
        assert waiting.wait(10), "the long poll never waited"
        # When a message is sent while it waits
        sqs.send_message(QueueUrl=url, MessageBody="late")
        poll.join(15)
    # Then the long poll answers it
    assert [message["Body"] for message in answers[0]] == ["late"]


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-30T05:06:32.000Z",  # an S3 object's LastModified, as moto stores it
        "2026-11-30T05:06:32Z",
        "2026-11-30T05:06:32.123456+02:00",
        "2026-11-30T05:06:32",  # naive: UTC
        "2026-11-30",  # no "T": botocore's parser
        "1796015784",  # epoch seconds as text
        1796015784.5,
        datetime(2026, 11, 30, 5, 6, 32, tzinfo=UTC),
    ],
)
def test_timestamps_read_as_botocore_reads_them(value: Any) -> None:
    # Given a timestamp as moto's serializer gets it, when read for an answer, then it is botocore's datetime
    fast, slow = moto_server.aware_datetime(value), moto_server._original_aware_datetime(value)
    assert fast == slow and fast.utcoffset() == slow.utcoffset()
    # and every format moto writes it in is the same text
    for style in ("iso8601", "iso8601_zeroed", "rfc822", "unixtimestamp"):
        serializer = moto_server.moto_serialize.TimestampSerializer(style)
        converter = getattr(serializer, f"_timestamp_{style}")
        assert converter(fast) == converter(slow)


def test_a_bucket_listing_reads_last_modified_without_the_general_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given moto's serializer as the launcher installs it, with botocore's general parser made to fail
    monkeypatch.setattr(moto_server.moto_serialize, "parse_to_aware_datetime", moto_server.aware_datetime)
    monkeypatch.setattr(moto_server, "_original_aware_datetime", lambda value: pytest.fail(f"parsed {value!r}"))
    serializer = moto_server.moto_serialize.TimestampSerializer("iso8601")
    # When an S3 object's LastModified is written, then it is the same instant, read without it
    assert serializer._convert_timestamp_to_str("2026-11-30T05:06:32.000Z", "iso8601") == "2026-11-30T05:06:32Z"


def test_event_templates_parse_each_jsonpath_once_and_answer_as_moto_does(monkeypatch: pytest.MonkeyPatch) -> None:
    import jsonpath_ng.ext
    from moto.events.utils import EventTemplateParser

    # Given an event as EventBridge hands it to a target, and moto's own answer for its default template
    event: Any = {
        "version": "0",
        "id": "e-1",
        "detail-type": "Image Generated",
        "source": "flux-images",
        "account": "123456789012",
        "time": 1796015192.0,  # moto keeps it as epoch seconds until it delivers
        "region": "us-east-1",
        "resources": [],
        "detail": {"image_id": "img_1", "nested": {"list": [1, 2]}},
        "ingestion-time": 1796015784.0,
    }
    expected = EventTemplateParser.parse("", {}, event)
    # When the launcher's parser serves moto, with the original made to count its parses
    parsed: list[str] = []
    original = moto_server._original_parse_jsonpath

    def counting(expression: str) -> Any:
        parsed.append(expression)
        return original(expression)

    moto_server.parse_jsonpath.cache_clear()
    monkeypatch.setattr(moto_server, "_original_parse_jsonpath", counting)
    monkeypatch.setattr(jsonpath_ng.ext, "parse", moto_server.parse_jsonpath)
    first = EventTemplateParser.parse("", {}, event)
    second = EventTemplateParser.parse("", {}, {**event, "id": "e-2", "detail": {"image_id": "img_2"}})
    moto_server.parse_jsonpath.cache_clear()
    # Then the answers are moto's, and each expression was parsed once for both events
    assert first == expected
    assert second["id"] == "e-2" and second["detail"] == {"image_id": "img_2"}
    assert parsed and len(parsed) == len(set(parsed)) == len(EventTemplateParser.DEFAULT_EVENT_INPUT_PATHS_MAP)


def _update_scenario() -> list[Any]:
    """Updates, conditions and a transaction a worker makes, each expression used more than once with other
    values: what every call answered (an item, or the error's code)."""
    import boto3
    from botocore.exceptions import ClientError
    from moto import mock_aws

    answers: list[Any] = []
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        _create_jobs_table(client)

        def call(operation: str, **request: Any) -> None:
            try:
                answers.append(getattr(client, operation)(**request).get("Attributes"))
            except ClientError as error:
                answers.append(error.response["Error"]["Code"])

        move = {
            "UpdateExpression": "SET #s = :to, n = if_not_exists(n, :zero) + :one, seen = list_append("
            "if_not_exists(seen, :empty), :at) REMOVE gone ADD tags :tag",
            "ConditionExpression": "attribute_not_exists(pk) OR #s = :from",
            "ExpressionAttributeNames": {"#s": "status"},
            "ReturnValues": "ALL_NEW",
        }
        for index, (before, after) in enumerate([("queued", "running"), ("running", "succeeded"), ("queued", "x")]):
            values = {
                ":to": {"S": after},
                ":from": {"S": before},
                ":zero": {"N": "0"},
                ":one": {"N": str(index + 1)},
                ":empty": {"L": []},
                ":at": {"L": [{"N": str(index)}]},
                ":tag": {"SS": [f"t{index}"]},
            }
            call("update_item", TableName="jobs", Key={"pk": {"S": "J"}, "sk": {"S": "I#1"}}, **move,
                 ExpressionAttributeValues=values)  # fmt: skip
        for value in ("1", "2"):
            call(
                "transact_write_items",
                TransactItems=[
                    {
                        "Update": {
                            "TableName": "jobs",
                            "Key": {"pk": {"S": "J"}, "sk": {"S": f"C#{value}"}},
                            "UpdateExpression": "ADD done :n SET #u = :u",
                            "ExpressionAttributeNames": {"#u": "updated"},
                            "ExpressionAttributeValues": {":n": {"N": value}, ":u": {"S": f"at {value}"}},
                        }
                    },
                    {
                        "ConditionCheck": {
                            "TableName": "jobs",
                            "Key": {"pk": {"S": "J"}, "sk": {"S": "I#1"}},
                            "ConditionExpression": "#s = :s",
                            "ExpressionAttributeNames": {"#s": "status"},
                            "ExpressionAttributeValues": {":s": {"S": "succeeded" if value == "1" else "queued"}},
                        }
                    },
                ],
            )
        for _ in range(2):  # a text that does not parse is refused every time, not once
            call("update_item", TableName="jobs", Key={"pk": {"S": "J"}, "sk": {"S": "I#2"}},
                 UpdateExpression="SET = :v", ExpressionAttributeValues={":v": {"S": "v"}})  # fmt: skip
        answers.append(client.scan(TableName="jobs")["Items"])
    return answers


def test_update_expressions_are_parsed_once_and_answer_as_moto_does(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given what moto answers to a worker's updates, conditions and transactions, each expression used again
    expected = _update_scenario()
    # When the launcher's parsing serves them, with moto's parsers made to count what they parse
    from moto.dynamodb.parsing import validators
    from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser

    updates: list[str] = []
    conditions: list[str] = []
    original_make, original_lex = moto_server._original_update_make, moto_server._original_lex_condition

    def counting_make(cls: type, expression: str) -> Any:
        updates.append(expression)
        return original_make(cls, expression)

    def counting_lex(parser: Any) -> Any:
        conditions.append(parser.condition_expression)
        return original_lex(parser)

    moto_server._update_expression_tree.cache_clear()
    moto_server._condition_tokens.cache_clear()
    monkeypatch.setattr(moto_server, "_original_update_make", counting_make)
    monkeypatch.setattr(moto_server, "_original_lex_condition", counting_lex)
    monkeypatch.setattr(moto_server.UpdateExpressionParser, "make", classmethod(moto_server.update_expression_tree))
    monkeypatch.setattr(
        moto_server.ConditionExpressionParser, "_lex_condition_expression", moto_server.lex_condition_expression
    )
    monkeypatch.setattr(DepthFirstTraverser, "traverse_node_recursively", moto_server.traverse_node_recursively)
    monkeypatch.setattr(validators, "deepcopy", moto_server.copy_for_validation)
    answered = _update_scenario()
    moto_server._update_expression_tree.cache_clear()
    moto_server._condition_tokens.cache_clear()

    # Then every answer is moto's (items, refusals, the table at the end)
    assert answered == expected
    assert "ConditionalCheckFailedException" in answered and "TransactionCanceledException" in answered
    assert answered.count("ValidationException") == 2
    # And each text that parses was parsed once, the one that does not at every call
    assert len([text for text in updates if text != "SET = :v"]) == len(
        {text for text in updates if text != "SET = :v"}
    )
    assert updates.count("SET = :v") == 2
    assert len(conditions) == len(set(conditions)) == 2


def test_a_parsed_update_is_copied_whole_for_each_validation() -> None:
    # Given a parsed update, as the launcher keeps it for every call of its text
    moto_server._update_expression_tree.cache_clear()
    tree = moto_server._update_expression_tree("SET a = :a, b = if_not_exists(b, :z) + :one REMOVE c")

    # When the validators copy it
    copied = moto_server.copy_for_validation(tree)

    # Then the copy is a new tree with the same shape, and it does not carry the pickle the next copy is made from
    def shape(node: Any) -> list[Any]:
        children = node.children if isinstance(getattr(node, "children", None), list) else []
        return [type(node).__name__, [shape(child) for child in children]]

    assert copied is not tree and shape(copied) == shape(tree) == shape(copy.deepcopy(tree))
    assert all(child.parent is copied for child in copied.children)
    assert not hasattr(copied, "local_copy_source")
    # And anything else is deep-copied as before
    other = {"list": [1, {"a": 2}]}
    assert moto_server.copy_for_validation(other) == other and moto_server.copy_for_validation(other) is not other
    moto_server._update_expression_tree.cache_clear()


def test_a_validated_update_tree_keeps_every_node_s_parent_as_moto_s_walk_does(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an update whose validation replaces nodes (values, paths, functions, arithmetic) in their parents
    from moto.dynamodb.models.dynamo_type import Item
    from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser, Node
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser
    from moto.dynamodb.parsing.validators import UpdateExpressionValidator

    table = types.SimpleNamespace(table_key_attrs=["pk"], attr=[], attribute_keys=["pk"])
    expression = "SET a = :a, b = if_not_exists(b, :z) + :one, c = list_append(c, :l) REMOVE d ADD e :one"
    values = {":a": {"S": "x"}, ":z": {"N": "0"}, ":one": {"N": "1"}, ":l": {"L": [{"S": "y"}]}}

    def validated() -> Any:
        item = Item(DynamoType({"S": "p"}), None, {"pk": {"S": "p"}, "c": {"L": []}})
        tree = UpdateExpressionParser.make(expression)
        return UpdateExpressionValidator(tree, {}, values, item, table).validate()  # type: ignore[arg-type]

    def parents(node: Any, parent: Any = None) -> list[Any]:
        children = node.children if isinstance(node, Node) and isinstance(node.children, list) else []
        here = [(type(node).__name__, node.parent is parent)] if isinstance(node, Node) else []
        return here + [pair for child in children for pair in parents(child, node)]

    expected = parents(validated())
    # When the launcher's walk validates it
    monkeypatch.setattr(DepthFirstTraverser, "traverse_node_recursively", moto_server.traverse_node_recursively)
    answered = parents(validated())
    # Then the tree has the same nodes, each under the parent it names, as after moto's own walk
    assert answered == expected
    assert all(named for _, named in answered[1:])


def _row() -> Any:
    from moto.dynamodb.models.dynamo_type import Item

    attrs = {
        "pk": {"S": "JOB#job_1"},
        "sk": {"S": "ITEM#000001"},
        "index": {"N": "1"},
        "status": {"S": "succeeded"},
        "request_index": {"N": "0"},
        "image_index": {"N": "1"},
        "labels": {"SS": ["b", "a", "c"]},
        "blob": {"M": {"data": {"B": "eHk="}}},
        "request": {"M": {"prompt": {"S": "a fox"}, "seed": {"N": "7"}}},
        "record": {
            "M": {
                "id": {"S": "img_1"},
                "parameters": {"M": {"seed": {"N": "7"}, "prompt": {"S": "a fox"}}},
                "stored": {"M": {"bucket": {"S": "b"}, "key": {"S": "k"}, "bytes": {"N": "10"}}},
                "tags": {"L": [{"S": "x"}, {"S": "y"}, {"M": {"deep": {"S": "z"}}}]},
            }
        },
    }
    return Item(hash_key=DynamoType(attrs["pk"]), range_key=DynamoType(attrs["sk"]), attrs=attrs)


# the results file's projection, as moto's parser turns it into paths
RESULT_PATHS = [[RESULT_NAMES[name] for name in path.split(".")] for path in RESULT_PROJECTION.split(", ")]


@pytest.mark.parametrize(
    "paths",
    [
        # the results file's projection (imagegen.adapters.job_rows.RESULT_PROJECTION): the fast path
        RESULT_PATHS,
        [["record", "tags[1]"], ["record", "tags[2]", "deep"], ["missing", "path"]],
        # absent, through a value that is not a map, and a whole map
        [["record", "absent"], ["status", "not_a_map"], ["record", "parameters"], ["request"], ["sk"]],
        [["record", "stored", "bytes"], ["record", "stored", "key"], ["record", "id"]],
        # a set, a binary: moto's own walk
        [["labels"], ["index"]],
        [["blob"], ["status"]],
        # one path within another, or twice: moto's own walk
        [["record"], ["record", "tags[0]"], ["record", "stored", "bytes"]],
        [["record", "stored", "bytes"], ["record", "stored"]],
        [["status"], ["status"]],
    ],
)
def test_a_projection_answers_as_moto_s_own(paths: list[list[str]]) -> None:
    ours, theirs = moto_server.project(_row(), paths), moto_server._original_project(_row(), paths)
    assert ours.to_json() == theirs.to_json()
    assert (ours.hash_key, ours.range_key) == (theirs.hash_key, theirs.range_key)


def test_a_projection_of_map_paths_never_turns_the_item_into_plain_json(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.dynamodb.models.dynamo_type import Item

    turned = []
    to_json = Item.to_regular_json
    monkeypatch.setattr(Item, "to_regular_json", lambda self: turned.append(1) or to_json(self))
    moto_server.project(_row(), RESULT_PATHS)
    assert turned == []
    moto_server._original_project(_row(), [["index"], ["status"], ["record", "id"]])
    assert len(turned) == 3  # moto's: once per path
