"""``make events``: the events the local stack's bus copied to the SQS queue ``flux-images-events``.

The local stack's EventBridge bus has a rule that copies every event of the service to that queue (moto). This
reads it with the project's own boto3, so no ``aws`` CLI, region or queue URL is needed: one line per event
(time, detail-type, the detail as JSON), or the whole events as JSON lines with ``--json``. Each event read is
taken off the queue (shown once) unless ``--keep``.

    make events                      # against the stack on the default ports (moto at PORT + 2001)
    make events ARGS="--keep --json"
    PYTHONPATH=local .venv/bin/python -m devstack.events --endpoint http://127.0.0.1:5101
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from devstack.aws import REGION, Resources

RECEIVE_MAX = 10  # SQS's ReceiveMessage page


def sqs_client(endpoint_url: str) -> Any:
    import boto3

    return boto3.client(
        "sqs",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - moto's dummy credentials
    )


def read_events(sqs: Any, queue_url: str, *, keep: bool, wait_s: int = 1) -> Iterator[dict[str, Any]]:
    """Every event on the queue now (waiting ``wait_s`` for the first), deleted once yielded unless ``keep``.

    With ``keep`` the messages are received with a visibility timeout of 0 (never hidden from the next reader), so
    the same ones come back: reading stops at a page with nothing new."""
    seen: set[str] = set()
    wait = wait_s
    while True:
        options = {"VisibilityTimeout": 0} if keep else {}
        answer = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=RECEIVE_MAX, WaitTimeSeconds=wait, **options
        )
        messages = [m for m in answer.get("Messages") or [] if m["MessageId"] not in seen]
        if not messages:
            return
        wait = 0
        for message in messages:
            seen.add(message["MessageId"])
            yield json.loads(message["Body"])
        if not keep:
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)


def format_event(event: dict[str, Any]) -> str:
    return f"{event.get('time', '')}  {event.get('detail-type', '?')}  {json.dumps(event.get('detail'))}"


def default_endpoint() -> str:
    from devstack.stack import local_ports

    return f"http://127.0.0.1:{local_ports(os.environ)['MOTO_PORT']}"


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="make events", description=__doc__.split("\n\n")[1])
    parser.add_argument("--endpoint", help="the local stack's moto (default: from MOTO_PORT / PORT, as make run)")
    parser.add_argument("--keep", action="store_true", help="leave the events on the queue")
    parser.add_argument("--json", action="store_true", help="whole events, one JSON document a line")
    args = parser.parse_args(argv)
    endpoint = args.endpoint or default_endpoint()

    from botocore.exceptions import BotoCoreError, ClientError

    sqs = sqs_client(endpoint)
    try:
        queue_url = sqs.get_queue_url(QueueName=Resources.events_capture_queue)["QueueUrl"]
        count = 0
        for event in read_events(sqs, queue_url, keep=args.keep):
            print(json.dumps(event) if args.json else format_event(event), file=out, flush=True)
            count += 1
    except (BotoCoreError, ClientError) as exc:
        print(
            f"make events: no local stack answers at {endpoint} ({type(exc).__name__}): start it with make run, "
            "or set PORT / MOTO_PORT as you did for it",
            file=sys.stderr,
        )
        return 1
    if not count:
        print(
            f"no events on {Resources.events_capture_queue} (the worker publishes them: submit a job)", file=sys.stderr
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
