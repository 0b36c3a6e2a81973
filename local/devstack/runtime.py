"""A small local Lambda runtime: the built artefact's functions in child processes, as Lambda runs them.

``make run-built`` (``python -m devstack --built``) serves what ``sam build`` produced instead of importing the
source tree into the stack's own process. Each function runs in execution environments, one child process each:

- a bare Python 3.12 (``scripts/find-python.sh``) started ``-I -S -B`` (no dev virtual environment, no
  site-packages, no ``PYTHON*`` variables) with ``sys.path`` = the function's folder, then each layer's ``python/``
  in the template's order, then the standard library (``devstack.artefact``); the working directory is the
  function's folder (``LAMBDA_TASK_ROOT``);
- its environment is the one the in-process mode sets (``service_environment``) plus the variables Lambda sets
  for the function (``AWS_LAMBDA_FUNCTION_NAME``, ``_HANDLER``, ``AWS_EXECUTION_ENV``, ...);
- it imports the handler's module once (init) and then serves one invocation at a time: the event and a context
  (request id, function name, deadline) go in as a JSON line on a pipe, the result or Lambda's error document
  (``errorMessage``/``errorType``/``stackTrace``) comes back as a JSON line on another;
- environments are created on demand, up to the function's concurrency (the API: as many as the gateway calls at
  once; the worker: its event source mapping's ``MaximumConcurrency``), and reused while warm;
- an invocation that outlives its deadline (the function's timeout) is killed with its process, and the next
  invocation gets a fresh environment, as on Lambda (``Task timed out after N seconds``); so is one whose process
  died;
- each line the child writes to stdout or stderr goes to the stack's log prefixed ``[ApiFunction#2]`` (function
  and environment number), and each environment's start is logged with where its code was loaded from.

A function error is raised as :class:`FunctionError` (its ``error`` is Lambda's document): the local gateway
answers it with ``DEFAULT_5XX``, the event source mapping counts the invocation failed.

Development tooling only: nothing here is deployed.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from devstack.artefact import ArtefactFunction, bare_argv, python312
from devstack.lambda_context import LambdaContext

BOOTSTRAP = Path(__file__).resolve().with_name("lambda_bootstrap.py")
# What a child runs: the bootstrap file, as the entry point of the bare interpreter (the file is not importable
# there: nothing of the dev tree is on sys.path). Its arguments follow: requests fd, results fd, handler.
_LAUNCH = f"import runpy\nrunpy.run_path({str(BOOTSTRAP)!r}, run_name='__main__')"
INHERITED = ("PATH", "LANG", "LC_ALL", "TMPDIR")  # from the host; Lambda sets its own equivalents
STOP_GRACE_S = 2.0  # after its requests pipe closes, a child gets this long to exit before it is killed


class FunctionError(Exception):
    """The invocation failed as Lambda reports it: ``error`` is the ``errorMessage``/``errorType`` document."""

    def __init__(self, error: Mapping[str, Any]) -> None:
        self.error = dict(error)
        super().__init__(json.dumps(self.error))

    @property
    def error_type(self) -> str:
        return str(self.error.get("errorType", ""))


def _lambda_error(error_type: str, message: str) -> FunctionError:
    return FunctionError({"errorMessage": message, "errorType": error_type})


def _short(path: str) -> str:
    """A path relative to the working directory when it is under it (the log lines stay readable)."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


@dataclass
class _Environment:
    """One execution environment: a child process, its pipes and the reader of its results."""

    number: int
    process: subprocess.Popen[bytes]
    requests: Any  # the write end of the requests pipe (text)
    results: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    loaded: dict[str, Any] = field(default_factory=dict)
    sys_path: list[str] = field(default_factory=list)
    invocations: int = 0

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.requests.close()
        if self.alive():
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


class LocalFunction:
    """One function of the artefact: its warm environments, and :meth:`invoke` to run one invocation."""

    def __init__(
        self,
        function: ArtefactFunction,
        environment: Mapping[str, str],
        *,
        timeout_s: float,
        memory_mb: int = 512,
        max_concurrency: int | None = None,
        python: str | None = None,
        log_stream: TextIO | None = None,
        log_lock: threading.Lock | None = None,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency!r}")
        self.function = function
        self.name = function.logical_id
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.max_concurrency = max_concurrency
        self.python = python or python312()
        self._environment = dict(environment)
        self._log_stream = log_stream
        self._log_lock = log_lock or threading.Lock()
        self._condition = threading.Condition()
        self._idle: list[_Environment] = []
        self._all: list[_Environment] = []
        self._starting = 0
        self._created = 0
        self._stopped = False
        self.invocations = 0
        self.cold_starts = 0
        self.timeouts = 0
        self.errors = 0

    # -- logging -----------------------------------------------------------------------------------

    def _log(self, prefix: str, line: str) -> None:
        stream = self._log_stream or sys.stderr
        with self._log_lock:
            print(f"{prefix} {line}", file=stream, flush=True)

    def _forward(self, source: Any, prefix: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in source:
                self._log(prefix, raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    # -- environments ------------------------------------------------------------------------------

    def child_environment(self) -> dict[str, str]:
        """The variables a child starts with: the stack's, plus what Lambda sets for this function."""
        env = {name: os.environ[name] for name in INHERITED if name in os.environ}
        env.update(self._environment)
        env.update(
            {
                "AWS_LAMBDA_FUNCTION_NAME": self.name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
                "LAMBDA_TASK_ROOT": str(self.function.code_dir),
                "_HANDLER": self.function.handler,
                "TZ": ":UTC",
            }
        )
        return env

    def _spawn(self, number: int, wait_s: float) -> _Environment:
        requests_read, requests_write = os.pipe()
        results_read, results_write = os.pipe()
        argv = [*bare_argv(self.function, _LAUNCH, python=self.python)]
        argv += [str(requests_read), str(results_write), self.function.handler]
        try:
            process = subprocess.Popen(  # noqa: S603 - a fixed interpreter and bootstrap
                argv,
                cwd=self.function.code_dir,
                env=self.child_environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(requests_read, results_write),
                start_new_session=True,  # a terminal's Ctrl-C is the stack's to handle: stop() ends this process
            )
        except BaseException:
            os.close(requests_write)  # no child to talk to: the parent's ends go too
            os.close(results_read)
            raise
        finally:
            os.close(requests_read)
            os.close(results_write)
        environment = _Environment(number, process, os.fdopen(requests_write, "w", encoding="utf-8"))
        prefix = f"[{self.name}#{number}]"
        for stream in (process.stdout, process.stderr):
            threading.Thread(target=self._forward, args=(stream, prefix), name=f"{prefix}-log", daemon=True).start()

        def read_results() -> None:
            with os.fdopen(results_read, "r", encoding="utf-8") as results, contextlib.suppress(OSError, ValueError):
                for line in results:
                    environment.results.put(json.loads(line))
            environment.results.put(None)  # the process is gone

        threading.Thread(target=read_results, name=f"{prefix}-results", daemon=True).start()
        started = time.monotonic()
        try:
            hello = environment.results.get(timeout=wait_s)
        except queue.Empty:
            environment.kill()
            raise _lambda_error(
                "Sandbox.Timedout", f"the init phase did not finish within {wait_s:.2f} seconds"
            ) from None
        if hello is None or "init_error" in hello:
            environment.kill()
            if hello is None:
                raise _lambda_error("Runtime.ExitError", f"{self.name}: the runtime exited during init")
            raise FunctionError(hello["init_error"])
        ready = hello["ready"]
        environment.loaded, environment.sys_path = ready["loaded"], ready["sys_path"]
        self._log(
            prefix,
            f"INIT {self.function.handler} in {(time.monotonic() - started) * 1000:.0f} ms (pid {ready['pid']}): "
            + ", ".join(f"{name} from {_short(path)}" for name, path in ready["loaded"].items() if path),
        )
        return environment

    def _acquire(self, wait_s: float) -> _Environment:
        deadline = time.monotonic() + wait_s
        with self._condition:
            while True:
                if self._stopped:
                    raise _lambda_error("Runtime.Stopped", f"{self.name}: the local runtime is stopping")
                while self._idle:
                    environment = self._idle.pop()
                    if environment.alive():
                        return environment
                    self._all.remove(environment)
                if self.max_concurrency is None or len(self._all) + self._starting < self.max_concurrency:
                    self._starting += 1
                    self._created += 1
                    number = self._created
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _lambda_error("TooManyRequestsException", "Rate Exceeded.")
                self._condition.wait(remaining)
        try:
            environment = self._spawn(number, max(deadline - time.monotonic(), 0.1))
        finally:
            with self._condition:
                self._starting -= 1
                self._condition.notify_all()
        with self._condition:
            self.cold_starts += 1
            self._all.append(environment)
            if self._stopped:
                environment.kill()
                raise _lambda_error("Runtime.Stopped", f"{self.name}: the local runtime is stopping")
        return environment

    def _release(self, environment: _Environment, *, healthy: bool) -> None:
        with self._condition:
            if healthy and environment.alive() and not self._stopped:
                self._idle.append(environment)
            else:
                if environment in self._all:
                    self._all.remove(environment)
                environment.kill()
            self._condition.notify_all()

    # -- invoking ----------------------------------------------------------------------------------

    def invoke(self, event: dict[str, Any], context: LambdaContext) -> Any:
        """Run one invocation in a warm (or new) environment; the result, or :class:`FunctionError`."""
        with self._condition:
            self.invocations += 1
        environment = self._acquire(max(context.get_remaining_time_in_millis() / 1000, 0.1))
        healthy = False
        try:
            remaining_ms = context.get_remaining_time_in_millis()
            request = {
                "event": event,
                "remaining_ms": remaining_ms,
                "context": {
                    "function_name": context.function_name,
                    "function_version": context.function_version,
                    "invoked_function_arn": context.invoked_function_arn,
                    "memory_limit_in_mb": context.memory_limit_in_mb,
                    "aws_request_id": context.aws_request_id,
                    "log_group_name": context.log_group_name,
                    "log_stream_name": context.log_stream_name,
                },
            }
            environment.invocations += 1
            try:
                environment.requests.write(json.dumps(request, separators=(",", ":")) + "\n")
                environment.requests.flush()
                answer = environment.results.get(timeout=remaining_ms / 1000)
            except (OSError, ValueError):
                answer = None
            except queue.Empty:
                with self._condition:
                    self.timeouts += 1
                self._log(f"[{self.name}#{environment.number}]", f"Task timed out after {self.timeout_s:.2f} seconds")
                raise _lambda_error("Sandbox.Timedout", f"Task timed out after {self.timeout_s:.2f} seconds") from None
            if answer is None:
                with self._condition:
                    self.errors += 1
                try:
                    code: int | None = environment.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    code = None  # its pipes broke but it lingers: killed on release
                raise _lambda_error("Runtime.ExitError", f"RequestId: {context.aws_request_id} Error: exit {code}")
            healthy = True
            if "error" in answer:
                with self._condition:
                    self.errors += 1
                raise FunctionError(answer["error"])
            return answer["result"]
        finally:
            self._release(environment, healthy=healthy)

    def handler(self, event: dict[str, Any], context: LambdaContext) -> Any:
        """``handler(event, context)``: what the event source mapping calls."""
        return self.invoke(event, context)

    @property
    def environments(self) -> int:
        with self._condition:
            return len(self._all)

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            environments, self._all, self._idle = list(self._all), [], []
            self._condition.notify_all()
        for environment in environments:  # a closed requests pipe ends the bootstrap's loop
            with contextlib.suppress(OSError):
                environment.requests.close()
        stop_at = time.monotonic() + STOP_GRACE_S
        for environment in environments:
            with contextlib.suppress(subprocess.TimeoutExpired):
                environment.process.wait(timeout=max(stop_at - time.monotonic(), 0.01))
            environment.kill()


class LocalRuntime:
    """The artefact's functions by logical id; :meth:`invoke` is the local gateway's ``invoke`` callable."""

    def __init__(self, functions: Mapping[str, LocalFunction]) -> None:
        self.functions = dict(functions)

    def invoke(self, function_id: str, event: dict[str, Any], context: LambdaContext) -> Any:
        return self.functions[function_id].invoke(event, context)

    def handler(self, function_id: str) -> Callable[[dict[str, Any], LambdaContext], Any]:
        return self.functions[function_id].handler

    def stop(self) -> None:
        for function in self.functions.values():
            function.stop()
