"""The local Lambda runtime (``devstack.runtime``) over a tiny artefact: a function folder and one layer.

Each invocation really runs in a child process of the bare Python 3.12 that ``make run-built`` uses; the fake
handler answers with what it sees (its context, environment, ``sys.path``, process id) or misbehaves on request.
"""

from __future__ import annotations

import io
import json
import os
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from devstack.artefact import ArtefactFunction
from devstack.gateway import LocalApiGateway, Route
from devstack.lambda_context import make_context
from devstack.runtime import FunctionError, LocalFunction, LocalRuntime
from support.polling import eventually

HANDLER = """
import json, os, sys, time
import helper

def lambda_handler(event, context):
    if "httpMethod" in event:  # behind the gateway: the action is in the body
        event = json.loads(event["body"] or "{}")
    action = event.get("action")
    if action == "raise":
        raise ValueError("boom")
    if action == "sleep":
        time.sleep(event["seconds"])
    if action == "print":
        print("to stdout", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
    if action == "exit":
        os._exit(3)
    if action == "unmarshal":
        return {"value": object()}
    if action == "proxy":
        return {"statusCode": 200, "body": json.dumps({"pid": os.getpid()})}
    return {
        "pid": os.getpid(),
        "helper": helper.__file__,
        "sys_path": sys.path,
        "isolated": sys.flags.isolated,
        "no_site": sys.flags.no_site,
        "cwd": os.getcwd(),
        "env": {name: os.environ.get(name) for name in ("AWS_LAMBDA_FUNCTION_NAME", "_HANDLER", "SERVICE_SETTING",
                                                         "VIRTUAL_ENV", "PYTHONPATH", "LAMBDA_TASK_ROOT")},
        "context": {
            "function_name": context.function_name,
            "aws_request_id": context.aws_request_id,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "invoked_function_arn": context.invoked_function_arn,
            "remaining_ms": context.get_remaining_time_in_millis(),
        },
    }
"""


@pytest.fixture
def artefact(tmp_path: Path) -> ArtefactFunction:
    code = tmp_path / "Fn"
    layer = tmp_path / "Layer" / "python"
    code.mkdir()
    layer.mkdir(parents=True)
    (code / "handler.py").write_text(textwrap.dedent(HANDLER), encoding="utf-8")
    (layer / "helper.py").write_text("VALUE = 1\n", encoding="utf-8")
    return ArtefactFunction("Fn", "handler.lambda_handler", code.resolve(), (layer.resolve(),))


@pytest.fixture
def log() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def make_function(artefact: ArtefactFunction, log: io.StringIO) -> Iterator[Any]:
    started: list[LocalFunction] = []

    def make(**options: Any) -> LocalFunction:
        options.setdefault("timeout_s", 10)
        function = LocalFunction(artefact, {"SERVICE_SETTING": "from-the-stack"}, log_stream=log, **options)
        started.append(function)
        return function

    yield make
    for function in started:
        function.stop()


def invoke(function: LocalFunction, event: dict[str, Any], timeout_s: float = 10) -> Any:
    return function.invoke(event, make_context("Fn", timeout_s))


def test_runtime_runs_the_handler_in_a_bare_child_with_the_artefact_path_and_a_lambda_context(
    make_function: Any, artefact: ArtefactFunction, log: io.StringIO
) -> None:
    # Given a function of the artefact
    function = make_function()
    context = make_context("Fn", 10)

    # When it is invoked
    seen = function.invoke({"action": "echo"}, context)

    # Then the handler ran in another process, isolated, with the function folder then the layer on sys.path
    assert seen["pid"] != os.getpid()
    assert seen["isolated"] == 1 and seen["no_site"] == 1
    assert seen["sys_path"][:2] == [str(artefact.code_dir), str(artefact.layer_dirs[0])]
    assert not any("site-packages" in entry or ".venv" in entry for entry in seen["sys_path"])
    assert Path(seen["helper"]).parent == artefact.layer_dirs[0]
    assert seen["cwd"] == str(artefact.code_dir)
    # And with the stack's environment plus Lambda's own variables, nothing of the dev environment
    assert seen["env"]["SERVICE_SETTING"] == "from-the-stack"
    assert seen["env"]["AWS_LAMBDA_FUNCTION_NAME"] == "Fn"
    assert seen["env"]["_HANDLER"] == "handler.lambda_handler"
    assert seen["env"]["LAMBDA_TASK_ROOT"] == str(artefact.code_dir)
    assert seen["env"]["VIRTUAL_ENV"] is None and seen["env"]["PYTHONPATH"] is None
    # And a context like Lambda's: the caller's request id and a deadline counting down from the timeout
    assert seen["context"]["aws_request_id"] == context.aws_request_id
    assert seen["context"]["function_name"] == "Fn"
    assert seen["context"]["memory_limit_in_mb"] == "512"
    assert 0 < seen["context"]["remaining_ms"] <= 10_000
    # And the environment's start is logged with where the handler came from
    assert "[Fn#1] INIT handler.lambda_handler in " in log.getvalue()


def test_runtime_reuses_a_warm_environment(make_function: Any) -> None:
    function = make_function()
    first, second = invoke(function, {}), invoke(function, {})
    assert first["pid"] == second["pid"]
    assert (function.environments, function.cold_starts) == (1, 1)


def test_handler_output_is_forwarded_line_by_line_with_a_prefix(make_function: Any, log: io.StringIO) -> None:
    function = make_function()
    invoke(function, {"action": "print"})
    # stdout and stderr are forwarded by a reader thread each: wait for both lines, in whichever order they land
    eventually(
        lambda: "to stderr" in log.getvalue() and "to stdout" in log.getvalue(),
        5,
        "the child's stdout and stderr lines to be forwarded",
    )
    lines = log.getvalue().splitlines()
    assert "[Fn#1] to stdout" in lines
    assert "[Fn#1] to stderr" in lines


def test_handler_exception_is_a_lambda_function_error_and_the_environment_stays(
    make_function: Any, log: io.StringIO
) -> None:
    function = make_function()
    warm = invoke(function, {})["pid"]

    with pytest.raises(FunctionError) as raised:
        invoke(function, {"action": "raise"})

    assert raised.value.error["errorType"] == "ValueError"
    assert raised.value.error["errorMessage"] == "boom"
    assert raised.value.error["requestId"]
    frames = raised.value.error["stackTrace"]
    assert len(frames) == 1 and "in lambda_handler" in frames[0]  # the handler's frames, not the runtime's
    assert json.loads(str(raised.value))["errorType"] == "ValueError"
    # The error line travels on the child's stderr, forwarded by a reader thread: it may land after the result.
    eventually(lambda: "[Fn#1] [ERROR] ValueError: boom" in log.getvalue(), 5, "the error line to be forwarded")
    assert "[Fn#1] [ERROR] ValueError: boom" in log.getvalue()
    assert invoke(function, {})["pid"] == warm  # an error does not reset the environment


def test_unserialisable_result_is_a_marshal_error(make_function: Any) -> None:
    with pytest.raises(FunctionError) as raised:
        invoke(make_function(), {"action": "unmarshal"})
    assert raised.value.error_type == "Runtime.MarshalError"


def test_timeout_kills_the_environment_and_the_next_invocation_gets_a_fresh_one(
    make_function: Any, log: io.StringIO
) -> None:
    # Given a warm environment
    function = make_function(timeout_s=1)
    warm = invoke(function, {}, timeout_s=1)["pid"]

    # When an invocation outlives its deadline
    started = time.monotonic()
    with pytest.raises(FunctionError) as raised:
        invoke(function, {"action": "sleep", "seconds": 30}, timeout_s=1)

    # Then it fails as Lambda's timeout, at the deadline, and the environment is gone
    assert raised.value.error_type == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in raised.value.error["errorMessage"]
    assert time.monotonic() - started < 10
    assert "Task timed out" in log.getvalue()
    # And the next invocation runs in a new process
    assert invoke(function, {}, timeout_s=1)["pid"] != warm


def test_a_process_that_exits_fails_its_invocation_and_is_replaced(make_function: Any) -> None:
    function = make_function()
    warm = invoke(function, {})["pid"]
    with pytest.raises(FunctionError) as raised:
        invoke(function, {"action": "exit"})
    assert raised.value.error_type == "Runtime.ExitError"
    assert invoke(function, {})["pid"] != warm


def test_environments_are_created_on_demand_up_to_the_concurrency(make_function: Any) -> None:
    # Given a function limited to 2 environments (an event source mapping's MaximumConcurrency)
    function = make_function(max_concurrency=2)
    pids: list[int] = []

    def call() -> None:
        invoke(function, {"action": "sleep", "seconds": 0.5})
        pids.append(invoke(function, {})["pid"])

    # When 4 invocations come at once
    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Then all were served, by at most 2 environments, one invocation at a time each
    assert len(pids) == 4
    assert len(set(pids)) <= 2
    assert function.environments <= 2


def test_the_gateway_invokes_the_runtime_and_answers_a_function_error_with_a_502(
    make_function: Any, log: io.StringIO
) -> None:
    # Given the local gateway in front of the runtime
    runtime = LocalRuntime({"Fn": make_function()})
    routes = [Route(path="/{proxy+}", method="ANY", function_id="Fn")]
    with LocalApiGateway(routes, runtime.invoke, api_keys=[], port=0, log_stream=log) as gateway:
        # When a request reaches a handler that answers, then one that raises
        ok = requests.post(f"{gateway.url}/x", json={"action": "proxy"}, timeout=10)
        failed = requests.post(f"{gateway.url}/x", json={"action": "raise"}, timeout=10)

    # Then the proxy answer comes back from the child, and the error is API Gateway's 502
    assert ok.status_code == 200
    assert ok.json()["pid"] != os.getpid()
    assert failed.status_code == 502
    assert failed.json() == {"message": "Internal server error"}
    assert "Fn raised (request " in log.getvalue() and "ValueError: boom" in log.getvalue()
