"""moto's server, with one local fix: DynamoDB transactions that do not copy whole tables.

moto backs up every table a TransactWriteItems touches with ``copy.deepcopy`` before applying it, once per
operation, so each transaction costs time proportional to the table's size: a job of a few hundred items slows
every later transaction down, and the local stack (one long-lived table) degrades as it is used. DynamoDB's
semantics only need the touched items restored when the transaction is canceled. This launcher snapshots those
items, lets moto apply the transaction without its table copies, and restores them on failure.

It also makes DynamoDB calls atomic with respect to each other, as DynamoDB is: moto's threaded server runs
requests concurrently on shared tables without locking, so two transactions could both pass a condition that
only one of them may pass (a job's "last item" guard, say). One lock around every DynamoDB operation fixes it.

Development tooling only: ``python -m devstack.moto_server -H 127.0.0.1 -p 5001``.
"""

from __future__ import annotations

import copy
import functools
import sys
import threading
import types
from typing import Any

from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models import __name__ as models_module_name
from moto.dynamodb.models.table import Table

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
            before = self.get_item(op["TableName"], key) if key else None
        except Exception:  # noqa: BLE001, S112 - moto reports the invalid operation itself
            continue
        snapshot.append((op["TableName"], key, before.to_json()["Attributes"] if before else None))
    try:
        _original_transact(self, transact_items)
    except Exception:
        for table_name, key, attributes in reversed(snapshot):
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


def install() -> None:
    module = sys.modules[models_module_name]
    module.copy = types.SimpleNamespace(deepcopy=_deepcopy_except_tables, copy=copy.copy)  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    for name in _SERIALIZED:
        if hasattr(DynamoDBBackend, name):
            setattr(DynamoDBBackend, name, _serialized(getattr(DynamoDBBackend, name)))


def main() -> None:
    install()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
