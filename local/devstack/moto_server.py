"""moto's server for the local stack: moto's own application, with local fixes for speed and for AWS's semantics.

DynamoDB transactions do not copy whole tables.

moto backs up every table a TransactWriteItems touches with ``copy.deepcopy`` before applying it, once per
operation, so each transaction costs time proportional to the table's size: a job of a few hundred items slows
every later transaction down, and the local stack (one long-lived table) degrades as it is used. DynamoDB's
semantics only need the touched items restored when the transaction is canceled. This launcher snapshots those
items, lets moto apply the transaction without its table copies, and restores them on failure.

It also makes DynamoDB calls atomic with respect to each other, as DynamoDB is: moto's threaded server runs
requests concurrently on shared tables without locking, so two transactions could both pass a condition that
only one of them may pass (a job's "last item" guard, say). One lock around every DynamoDB operation fixes it.

And it answers DynamoDB's data-plane calls (GetItem, Query, TransactWriteItems…) by writing moto's result as JSON
directly. moto 5.2 runs every answer through a generic, shape-driven serializer whose per-call set-up and
per-attribute look-ups made it the local stack's bottleneck (about two thirds of the moto process's time in a
bulk job, profiled with py-spy). These answers are already DynamoDB's wire format (attribute values as
``{"S": …}``, binaries base64), so ``json.dumps`` gives the same bytes a client parses; anything that is not plain
JSON (an error, a timestamp, a paginated result) still goes through moto's serializer. The fields moto leaves
None are left out as its serializer leaves them out; the answer is only walked for them when its JSON holds a
``null`` at all (a walk of every attribute of every item was 6 % of the moto process's time in a bulk job).

A table Query reads one partition: moto's sorts every item of the table first (all jobs' items, on every job
Query), then filters by the partition key and compares the sort key item by item. Here it starts from that
partition's items only, narrowed by a ``begins_with`` sort-key prefix and past an ``ExclusiveStartKey`` (both
plain string comparisons of what moto would compare), and moto's own query runs on those, so its answer is the
same; a 10,000-item job made each of its Queries take seconds without this.

SQS's ReceiveMessage checks each message it hands out against the queue's retention period by computing every
queue attribute (three times), each of which walks every message: with a job's 2,000 messages queued, the moto
process spent its whole CPU there and the stack stalled for minutes. The check reads the one attribute it needs.

Sending a message asked for every queue attribute (each approximate count walks every message) to read one
FIFO setting, so a job's fan-out of 10,000 messages cost O(messages) per message sent: while sending, a queue's
attributes are only its FIFO ones, computed as moto does.

SQS's DeleteMessage rebuilt a queue's message list without the lock that SendMessage appends under, so a message
sent while another was deleted could be appended to the discarded list: lost, never delivered (found when a
10,000-line upload job ended with one SendMessageBatch's 10 items queued forever, their messages absent from the
queue). The delete runs under the queue's lock here.

Every look-up of a service's backend (several per request: one per item of a transaction) took one lock shared by
every service and every request thread, to create the account's backend on first use; under a bulk job's load
the request threads queued on it (py-spy: most of the moto process's samples). The look-up of an existing account
takes no lock now; the first one still creates it under that lock.

Two per-request costs of moto's server go too: it lists its own package directory (``listdir`` + ``isdir`` on
~150 folders) to route every request, under a lock all requests share (listed once now), and it logs a line per
request through werkzeug, which contended for the logging lock (warnings and errors still print).

Listing a queue's messages (every ReceiveMessage does) read the clock twice per message, so with a bulk job's
2,000 messages queued one receive cost 25 ms of the process's CPU; it reads it once per listing now (3.3 ms;
a receive of one message from a queue of 2,000, 300 receives from 4 threads, the process's CPU time per call).

moto's serializer turns every timestamp it stores as ISO 8601 text (each S3 object's LastModified) back into a
datetime with botocore's general-purpose parser (dateutil) before formatting it: listing a bucket of a few
thousand objects spent most of its time there (py-spy, the integration and reliability tiers: 7.5 s of the moto
process's CPU). ISO 8601 text is read with ``datetime.fromisoformat`` here; anything else as before.

EventBridge delivered every event to every target through moto's input template, which parses each of its JSONPath
expressions (nine by default) with a new parser per expression, every time (py-spy, the same tiers: 5.5 s of the
moto process's CPU). The parsed expressions do not change and are not changed by ``find``: each is parsed once
here (``parse_jsonpath``).

Every update of an item (UpdateItem, and each Update of a transaction) had moto parse its update expression twice
and lex its condition expression once, then run ten validators over a deep copy of the tree, each a depth-first walk
that rebuilt its map of node types (a dict of bound methods) at every node and asked ``isinstance`` of abstract
classes there: three quarters of a transaction's time in the moto process (py-spy, a bulk job). A worker's
expressions are a few fixed texts: each is parsed and lexed once here (the tree is only read, or deep-copied before
it changes; the tokens are immutable), and the walk keeps its per-class answers. The validators' deep copy of a tree
is made from its pickle (C instead of ``copy``'s Python walk). Measured with ``benchmarks/counter_contention.py
--items 400 --runs 1`` (1,665 transactions from 32 threads): the moto process's CPU 25.7 and 25.0 s before, 19.2 and
17.3 s after (without the pickled copies); a 200-item bulk run (``benchmarks/bulk_jobs.py --vendor-items 0``, three
runs each, back to back with the code before): 12.2-13.1 s before, 10.4 s after, 1.2 s of it starting and seeding.

A Query or GetItem with a ``ProjectionExpression`` turned the whole item into plain JSON once per projected path,
then the projection back into DynamoDB's format: the results file's read of a job's rows (nine paths each) took
twice as long as reading the rows whole. Paths of map keys are copied from the stored item as they are now (one
with a list index, within another path, or reaching a set or a binary still goes through moto's own walk).

Started by the local stack (``LocalAws``), it exits when that process dies without stopping it
(``devstack.serving.exit_with_parent``).

Development tooling only: ``python -m devstack.moto_server -H 127.0.0.1 -p 5001``.
"""

from __future__ import annotations

import base64
import copy
import functools
import inspect
import json
import logging
import os
import pickle
import sys
import threading
import time
import types
from collections import deque
from datetime import UTC, datetime
from typing import Any, cast

import jsonpath_ng.ext
from moto.core import serialize as moto_serialize
from moto.core.responses import ActionResult
from moto.core.utils import camelcase_to_underscores, unix_time_millis
from moto.dynamodb.comparisons import ConditionExpressionParser
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models import __name__ as models_module_name
from moto.dynamodb.models.dynamo_type import Item as DynamoItem
from moto.dynamodb.models.table import Table
from moto.dynamodb.parsing.ast_nodes import DepthFirstTraverser, Node  # type: ignore[attr-defined]
from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]
from moto.dynamodb.parsing.validators import Validator
from moto.dynamodb.responses import DynamoHandler, DynamoResult
from moto.sqs.models import Queue, SQSBackend

from devstack.serving import PARENT_PID_VARIABLE, exit_with_parent

_real_deepcopy = copy.deepcopy
_original_transact = DynamoDBBackend.transact_write_items


def _deepcopy_except_tables(value: Any, memo: Any = None) -> Any:
    return value if isinstance(value, Table) else _real_deepcopy(value, memo)


def _key_of(backend: DynamoDBBackend, op_type: str, op: dict[str, Any]) -> dict[str, Any] | None:
    if op_type != "Put":
        return op.get("Key")
    table = backend.get_table(op["TableName"])
    key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = op["Item"][table.range_key_attr]
    return key


def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    snapshot = []
    for entry in transact_items:
        if len(entry) != 1:
            continue  # moto raises its own validation error for this shape
        op_type, op = next(iter(entry.items()))
        try:
            key = _key_of(self, op_type, op)
            before = self.get_item(op["TableName"], key) if key is not None else None
        except Exception:  # noqa: BLE001, S112 - moto reports the invalid operation itself
            continue
        snapshot.append((op["TableName"], key, before.to_json()["Attributes"] if before else None))
    try:
        _original_transact(self, transact_items)
    except Exception:
        for table_name, key, attributes in reversed(snapshot):
            assert key is not None  # only operations with a key were snapshotted
            if attributes is None:
                if self.get_item(table_name, key) is not None:
                    self.delete_item(table_name, key)
            else:
                self.put_item(table_name, attributes)
        raise


_DYNAMODB_LOCK = threading.RLock()
_SERIALIZED = (
    "get_item",
    "put_item",
    "update_item",
    "delete_item",
    "query",
    "scan",
    "batch_get_item",
    "batch_write_item",
    "transact_get_items",
    "transact_write_items",
)


def _serialized(method: Any) -> Any:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _DYNAMODB_LOCK:
            return method(*args, **kwargs)

    return locked


_PLAIN_JSON_ACTIONS = frozenset(
    {
        "GetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "Query",
        "Scan",
        "BatchGetItem",
        "BatchWriteItem",
        "TransactGetItems",
        "TransactWriteItems",
    }
)
_original_serialized = DynamoHandler.serialized


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_none(entry) for key, entry in value.items() if entry is not None}
    if isinstance(value, list):
        return [_without_none(entry) for entry in value]
    return value


def _binary(value: Any) -> str:
    if isinstance(value, bytes):  # a B or BS attribute value: base64 on the wire
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not plain JSON")


def serialized(self: DynamoHandler, action_result: ActionResult) -> Any:
    result = action_result.result
    plain = type(action_result) in (ActionResult, DynamoResult) and isinstance(result, dict)
    if plain and self._get_action() in _PLAIN_JSON_ACTIONS:
        try:
            body = json.dumps(result, separators=(",", ":"), default=_binary)
            if "null" in body:  # a field moto left None (or the text in a value): written again without them
                body = json.dumps(_without_none(result), separators=(",", ":"), default=_binary)
        except (TypeError, ValueError):  # not plain JSON after all (a timestamp): moto's serializer knows the shapes
            return _original_serialized(self, action_result)
        return 200, {"Content-Type": "application/x-amz-json-1.0", **self.response_headers}, body
    return _original_serialized(self, action_result)


_original_backend_getitem: Any = None
_original_query = Table.query
_QUERY_PARAMETERS = inspect.signature(_original_query)


class _OnePartition:
    """The table as ``Table.query`` sees it, with ``all_items()`` holding only the candidates of one partition."""

    def __init__(self, table: Table, candidates: list[Any]) -> None:
        self._table = table
        self._candidates = candidates

    def all_items(self) -> list[Any]:
        return self._candidates

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


def _string_sort_key(item: Any) -> str | None:
    sort_key = item.range_key
    return sort_key.value if sort_key is not None and sort_key.type == "S" else None


def query(self: Table, *args: Any, **kwargs: Any) -> Any:
    bound = _QUERY_PARAMETERS.bind(self, *args, **kwargs)
    arguments = bound.arguments
    hash_key = arguments.get("hash_key")
    if arguments.get("index_name") or not self.range_key_attr or hash_key is None:
        return _original_query(self, *args, **kwargs)
    candidates = list(self.items.get(hash_key, {}).values())
    keys = [_string_sort_key(item) for item in candidates]
    values = [value for value in keys if value is not None]
    if len(values) == len(keys):  # string sort keys: narrow with plain string comparisons
        paired = sorted(zip(values, candidates, strict=True), key=lambda pair: pair[0])
        comparison, operands = arguments.get("range_comparison"), arguments.get("range_objs") or []
        if comparison == "BEGINS_WITH" and operands and operands[0].type == "S":
            paired = [pair for pair in paired if pair[0].startswith(operands[0].value)]
        start = (arguments.get("exclusive_start_key") or {}).get(self.range_key_attr)
        if start and "S" in start and arguments.get("scan_index_forward", True):
            paired = [pair for pair in paired if pair[0] > start["S"]]
        candidates = [item for _, item in paired]
    return _original_query(cast(Table, _OnePartition(self, candidates)), *args, **kwargs)


def is_message_valid_based_on_retention_period(self: SQSBackend, queue_name: str, message: Any) -> bool:
    from moto.core.utils import unix_time

    retention_s = float(self.get_queue(queue_name).message_retention_period)  # type: ignore[attr-defined]
    return bool(retention_s + message.sent_timestamp / 1000 > unix_time())


def _existing_backend_first(self: Any, account_id: str) -> Any:
    try:
        return dict.__getitem__(self, account_id)
    except KeyError:
        return _original_backend_getitem(self, account_id)


_original_delete_message = Queue.delete_message


def queue_delete_message(self: Queue, receipt_handle: str) -> None:
    with self._messages_lock:  # the lock add_message appends under: no send lands in the list being replaced
        _original_delete_message(self, receipt_handle)


_original_receive_message = SQSBackend.receive_message
_RECEIVE_LOCKS: dict[int, threading.Lock] = {}
_RECEIVE_LOCKS_GUARD = threading.Lock()


def receive_message(
    self: SQSBackend,
    queue_name: str,
    count: int,
    wait_seconds_timeout: int,
    visibility_timeout: int,
    message_attribute_names: list[str] | None = None,
) -> list[Any]:
    """moto's ReceiveMessage with its take made atomic. moto checks a message's visibility and marks it received
    without a lock, so two receives at once can both take one message, which SQS never does within a visibility
    timeout; the worker's refill and the event source mapping's pollers receive at once. Each attempt runs
    moto's own code as a short poll under the queue's receive lock; a long poll waits between attempts outside
    it (moto's own wait, woken by a send), so one long poll never holds up another receiver."""
    queue = self.get_queue(queue_name)
    with _RECEIVE_LOCKS_GUARD:
        lock = _RECEIVE_LOCKS.setdefault(id(queue), threading.Lock())
    ends = time.monotonic() + wait_seconds_timeout
    while True:
        with lock:
            taken = _original_receive_message(self, queue_name, count, 0, visibility_timeout, message_attribute_names)
        remaining = ends - time.monotonic()
        if taken or remaining <= 0:
            return taken
        waited = time.monotonic()
        queue.wait_for_messages(min(1, remaining))  # type: ignore[arg-type]
        if time.monotonic() - waited < 0.01:  # visible messages none could take (a FIFO group in flight)
            time.sleep(min(0.05, max(0.0, remaining)))


_original_queue_messages = Queue.messages


def queue_messages(self: Queue) -> list[Any]:
    """A queue's visible, undelayed messages, as moto lists them, reading the clock once for the whole walk."""
    now = unix_time_millis()
    return [message for message in self._messages if now > message.visible_at and not now < message.delayed_until]


_sending = threading.local()
_original_queue_attributes = Queue.attributes
_original_send_message = SQSBackend.send_message


def queue_attributes(self: Queue) -> dict[str, Any]:
    if not getattr(_sending, "active", False):
        return _original_queue_attributes.fget(self)  # type: ignore[no-any-return, attr-defined]
    # What a send reads (ContentBasedDeduplication), as moto computes it: FIFO queues only, booleans as text.
    fifo = (
        {name: getattr(self, camelcase_to_underscores(name)) for name in self.FIFO_ATTRIBUTES}
        if self.fifo_queue
        else {}
    )
    return {name: str(value).lower() if isinstance(value, bool) else value for name, value in fifo.items()}


def send_message(self: SQSBackend, *args: Any, **kwargs: Any) -> Any:
    _sending.active = True
    try:
        return _original_send_message(self, *args, **kwargs)
    finally:
        _sending.active = False


_original_aware_datetime = moto_serialize.parse_to_aware_datetime
_original_parse_jsonpath = jsonpath_ng.ext.parse


def aware_datetime(value: Any) -> datetime:
    """What botocore's ``parse_to_aware_datetime`` answers (in UTC; naive read as UTC), without dateutil for
    ISO 8601 text."""
    if isinstance(value, str) and "T" in value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return cast(datetime, _original_aware_datetime(value))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return cast(datetime, _original_aware_datetime(value))


@functools.lru_cache(maxsize=512)
def parse_jsonpath(expression: str) -> Any:
    """``jsonpath_ng.ext.parse``, once per expression (what moto's EventBridge templates parse per event)."""
    return _original_parse_jsonpath(expression)


_original_update_make = UpdateExpressionParser.make.__func__
_original_lex_condition = ConditionExpressionParser._lex_condition_expression


@functools.lru_cache(maxsize=512)
def _update_expression_tree(expression: str) -> Any:
    tree = _original_update_make(UpdateExpressionParser, expression)
    tree.local_copy_source = pickle.dumps(tree, protocol=pickle.HIGHEST_PROTOCOL)
    return tree


def copy_for_validation(value: Any, memo: Any = None) -> Any:
    """The validators' ``deepcopy``: a parsed update tree is copied from its pickle (the same object graph as
    ``deepcopy`` makes of these plain objects, in C: 0.13 ms against 0.69 ms for a worker's six-action update);
    anything else as before."""
    source = getattr(value, "local_copy_source", None) if memo is None else None
    return pickle.loads(source) if source is not None else _real_deepcopy(value, memo)  # noqa: S301 - our own bytes


def update_expression_tree(cls: type, expression: str) -> Any:
    """``UpdateExpressionParser.make``, once per expression text. Its tree is only read (the clauses it names)
    or deep-copied by the validator before it is changed, so one tree serves every call; a text that fails to
    parse raises each time, as before."""
    if cls is not UpdateExpressionParser:
        return _original_update_make(cls, expression)
    return _update_expression_tree(expression)


@functools.lru_cache(maxsize=512)
def _condition_tokens(expression: str) -> tuple[Any, ...]:
    return tuple(_original_lex_condition(ConditionExpressionParser(expression, None, None)))


def lex_condition_expression(self: ConditionExpressionParser) -> Any:
    """``ConditionExpressionParser._lex_condition_expression``, once per expression text: its tokens depend on
    the text alone (names and values are read by the later steps) and are immutable tuples, each with an empty
    list of children that nothing appends to. The parser consumes the deque it is given: each call gets a new
    one."""
    return deque(_condition_tokens(self.condition_expression))


_is_node: dict[type, bool] = {}
_processes: dict[tuple[type, type], bool] = {}


def traverse_node_recursively(self: DepthFirstTraverser, node: Any, child_id: int = -1) -> Any:
    """moto's ``DepthFirstTraverser.traverse_node_recursively``: the same walk (children first, in order, each
    processed node put in its parent's place), without rebuilding the walker's map of node types (a dict of bound
    methods) at every node, nor asking ``isinstance`` of abstract classes at every node of every walk: both answers
    depend on the classes alone, and are kept per class."""
    kind = type(node)
    is_node = _is_node.get(kind)
    if is_node is None:
        is_node = _is_node[kind] = isinstance(node, Node)
    if not is_node:
        return node
    parent_node = node.parent
    if node.children is not None:
        for i, child_node in enumerate(node.children):
            self.pre_processing_of_child(node, i)
            self.traverse_node_recursively(child_node, i)
    pair = (type(self), kind)
    processes = _processes.get(pair)
    if processes is None:
        processes = _processes[pair] = isinstance(node, tuple(self.nodes_to_be_processed()))
    if processes:
        node = self.process(node)
        node.parent = parent_node
        if parent_node:
            parent_node.children[child_id] = node
    return node


_original_project = DynamoItem.project


def _json_types_only(value: Any) -> bool:
    """Whether a stored value holds only strings, numbers, booleans, nulls, maps and lists."""
    if value.type == "M":
        return all(_json_types_only(nested) for nested in value.value.values())
    if value.type == "L":
        return all(_json_types_only(nested) for nested in value.value)
    return value.type in ("S", "N", "BOOL", "NULL")


def project(self: DynamoItem, projection_expressions: list[list[str]]) -> DynamoItem:
    """moto's projection, for paths of map keys only, none within another: each path's value is copied in DynamoDB's
    wire format from the item as stored. moto's own turns the whole item into plain JSON once per path (a results
    file projects nine paths of every item row), then the projection back into the wire format. A path with a list
    index, one path within another, or a value holding a set or a binary still goes through moto's own walk; a path
    through a value that is not a map adds nothing, as in DynamoDB's answer (moto's own raises there)."""
    paths = [tuple(path) for path in projection_expressions]
    if any("[" in key for path in paths for key in path) or any(
        a == b[: len(a)] for i, a in enumerate(paths) for j, b in enumerate(paths) if i != j
    ):
        return cast(DynamoItem, _original_project(self, projection_expressions))
    projected: dict[str, Any] = {}
    for path in paths:
        value = self.attrs.get(path[0])
        for key in path[1:]:
            value = value.value.get(key) if value is not None and value.type == "M" else None
        if value is None:
            continue  # nothing there (or a path through a value that is not a map): the path adds nothing
        if not _json_types_only(value):  # moto's answer re-encodes sets and binaries: let it give its own
            return cast(DynamoItem, _original_project(self, projection_expressions))
        into = projected
        for key in path[:-1]:
            into = into.setdefault(key, {"M": {}})["M"]
        into[path[-1]] = value.to_json()
    return DynamoItem(hash_key=self.hash_key, range_key=self.range_key, attrs=projected)


def install() -> None:
    from moto import backends
    from moto.core.base_backend import BackendDict

    global _original_backend_getitem
    _original_backend_getitem = BackendDict.__getitem__
    BackendDict.__getitem__ = _existing_backend_first  # type: ignore[method-assign]

    modules = frozenset(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules  # type: ignore[assignment]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    module = sys.modules[models_module_name]
    module.copy = types.SimpleNamespace(deepcopy=_deepcopy_except_tables, copy=copy.copy)  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    DynamoHandler.serialized = serialized  # type: ignore[method-assign, assignment]
    Table.query = query  # type: ignore[method-assign]
    DynamoItem.project = project  # type: ignore[method-assign]
    UpdateExpressionParser.make = classmethod(update_expression_tree)  # type: ignore[method-assign, assignment]
    ConditionExpressionParser._lex_condition_expression = lex_condition_expression  # type: ignore[method-assign]
    DepthFirstTraverser.traverse_node_recursively = traverse_node_recursively  # type: ignore[method-assign]
    sys.modules[Validator.__module__].deepcopy = copy_for_validation  # type: ignore[attr-defined]
    Queue.delete_message = queue_delete_message  # type: ignore[method-assign]
    Queue.attributes = property(queue_attributes)  # type: ignore[method-assign, assignment]
    Queue.messages = property(queue_messages)  # type: ignore[method-assign, assignment]
    SQSBackend.send_message = send_message  # type: ignore[method-assign]
    moto_serialize.parse_to_aware_datetime = aware_datetime  # type: ignore[attr-defined]
    jsonpath_ng.ext.parse = parse_jsonpath  # moto's events/utils.py imports it at each call
    SQSBackend.receive_message = receive_message  # type: ignore[method-assign]
    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period  # type: ignore[method-assign]
    for name in _SERIALIZED:
        if hasattr(DynamoDBBackend, name):
            setattr(DynamoDBBackend, name, _serialized(getattr(DynamoDBBackend, name)))


def main() -> None:
    install()
    if parent := os.environ.get(PARENT_PID_VARIABLE, "").strip():  # started by the local stack: end with it
        exit_with_parent(int(parent))
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
