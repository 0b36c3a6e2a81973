"""Runs INSIDE a bare child process (``artefact.probe_argv``): the standard library and the artefact only.

Imports a handler module (or runs a floor's imports), optionally handles its first event, and prints one JSON line:
the times, every module compiled from source instead of loaded from its ``.pyc`` (``source_to_code`` is what
``SourceFileLoader`` calls only then), and where every loaded module came from. Standard library only: nothing
of the dev environment may be imported here.

``first_event(kind)`` is the parent's side (the artefact test and the cold-start benchmark import it): the event
each handler is given, next to ``handle_first_event``, which relies on its shape. Importing this module has no
effect beyond its definitions.
"""

import importlib.machinery
import json
import sys
import time

COMPILED: list[str] = []


def watch_compilation() -> None:
    """Record each module ``SourceFileLoader`` compiles from source (no usable ``.pyc``)."""
    loader = importlib.machinery.SourceFileLoader
    original = loader.source_to_code

    def source_to_code(self, data, path, *, _optimize=-1):  # type: ignore[no-untyped-def]
        COMPILED.append(path)
        return original(self, data, path, _optimize=_optimize)

    loader.source_to_code = source_to_code  # type: ignore[method-assign]


class Context:
    """The attributes of the Lambda runtime's context object that the handlers and Powertools read."""

    function_name = "probe"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:probe"
    memory_limit_in_mb = "512"
    aws_request_id = "00000000-0000-4000-8000-000000000000"
    log_group_name = "/aws/lambda/probe"
    log_stream_name = "probe"

    def __init__(self) -> None:
        self._deadline = time.monotonic() + 60

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def first_event(kind: str) -> dict:
    """The first event of a handler's probe, built in the parent: for the API a POST /v1/images with an invalid
    body (``events/post_image_invalid.json``: a 422, no AWS call); for the worker one job message for an unknown
    job (``events/sqs_receive_message.json``), whose item processing ``handle_first_event`` acknowledges."""
    from pathlib import Path  # not at the top: the child would import it before the handler it measures

    events = Path(__file__).resolve().parents[2] / "events"
    if kind == "api":
        return json.loads((events / "post_image_invalid.json").read_text(encoding="utf-8"))
    event = json.loads((events / "sqs_receive_message.json").read_text(encoding="utf-8"))
    body = {"version": 1, "request": {"prompt": "a lighthouse"}, "job_id": "job_" + "0" * 32, "index": 0}
    event["Records"][0]["body"] = json.dumps(body)
    return event


def handle_first_event(module: object, kind: str, event: dict) -> object:
    """The first invocation. The worker's item processing (a DynamoDB read, then the upstream) is replaced by an
    acknowledgement: measured is what the first batch sets up (settings, AWS clients, the batch processor, record
    parsing and validation), not the network."""
    if kind == "worker":
        from imagegen import item_processor

        item_processor.ItemProcessor.process = lambda self, *args, **kwargs: item_processor.Outcome.ack()  # type: ignore[method-assign]
    return module.lambda_handler(event, Context())  # type: ignore[attr-defined]


def main(mode: str, payload: str, watch: str) -> None:
    if watch == "watch":
        watch_compilation()
    result: dict[str, object] = {}
    if mode == "floor":
        started = time.perf_counter()
        exec(compile(payload, "<floor>", "exec"), {})  # noqa: S102 - the benchmark's own import lines
        result["import_s"] = time.perf_counter() - started
    else:
        spec = json.loads(payload)
        started = time.perf_counter()
        module = importlib.import_module(spec["module"])
        imported = time.perf_counter()
        result["import_s"] = imported - started
        if spec.get("kind"):
            answer = handle_first_event(module, spec["kind"], spec["event"])
            result["first_s"] = time.perf_counter() - imported
            result["answer"] = answer
    result["compiled"] = COMPILED
    result["modules"] = {
        name: getattr(module, "__file__", None) for name, module in sorted(sys.modules.items()) if module is not None
    }
    print("\n" + json.dumps(result, default=str))
