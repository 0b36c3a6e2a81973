"""The child side of :mod:`devstack.runtime`: one Lambda execution environment in a bare Python 3.12.

Standard library only: it runs with nothing on ``sys.path`` but the standard library and the artefact
(``devstack.artefact.bare_argv``), as ``awslambdaric``'s bootstrap does in ``/var/runtime``. It

1. imports the handler's module (Lambda's init phase) and reports, on the results pipe, where the module and
   ``imagegen`` were loaded from and the ``sys.path`` it ran with, or the init error;
2. then, one at a time, reads an invocation (one JSON line on the requests pipe: event and context), calls the
   handler and writes one JSON line back: ``{"result": ...}`` or ``{"error": {"errorMessage", "errorType",
   "stackTrace"}}``, the shape of a Lambda function error. A result JSON cannot carry is a
   ``Runtime.MarshalError`` (a ``Decimal`` is written as a number, as the runtime does).

The handler's stdout and stderr are the environment's log (the parent prefixes and forwards each line); an error
is also logged there as the runtime logs it (``[ERROR] Type: message`` and the traceback). The parent kills the
process when an invocation outlives its deadline. Started as
``python -I -S -B -c <bootstrap> REQUESTS_FD RESULTS_FD HANDLER`` (see ``devstack.runtime``).
"""

import decimal
import importlib
import json
import os
import sys
import time
import traceback


class CognitoIdentity:
    cognito_identity_id = None
    cognito_identity_pool_id = None


class LambdaContext:
    """The handler's ``context``, with the attribute names of the Lambda Python runtime's."""

    def __init__(self, fields, deadline_monotonic):
        self.function_name = fields["function_name"]
        self.function_version = fields["function_version"]
        self.invoked_function_arn = fields["invoked_function_arn"]
        self.memory_limit_in_mb = fields["memory_limit_in_mb"]
        self.aws_request_id = fields["aws_request_id"]
        self.log_group_name = fields["log_group_name"]
        self.log_stream_name = fields["log_stream_name"]
        self.identity = CognitoIdentity()
        self.client_context = None
        self.tenant_id = None
        self._deadline = deadline_monotonic

    def get_remaining_time_in_millis(self):
        return max(int((self._deadline - time.monotonic()) * 1000), 0)


def _error(exc, error_type=None, request_id="", skip_frames=0):
    """Lambda's error document; ``skip_frames`` leaves out the bootstrap's own frames (Lambda shows the handler's)."""
    frames = traceback.extract_tb(exc.__traceback__)[skip_frames:]
    return {
        "errorMessage": str(exc),
        "errorType": error_type or type(exc).__name__,
        "requestId": request_id,
        "stackTrace": [line.rstrip("\n") for line in traceback.format_list(frames)],
    }


def _log_error(error):
    print(f"[ERROR] {error['errorType']}: {error['errorMessage']}", file=sys.stderr)
    print("Traceback (most recent call last):", file=sys.stderr)
    for line in error["stackTrace"]:
        print(line, file=sys.stderr)
    sys.stderr.flush()


def _json_default(value):
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _write(results, document):
    results.write(json.dumps(document, default=_json_default, separators=(",", ":")) + "\n")
    results.flush()


def _origin(name):
    module = sys.modules.get(name)
    return getattr(module, "__file__", None) if module is not None else None


def main(argv):
    requests_fd, results_fd, handler_name = int(argv[1]), int(argv[2]), argv[3]
    requests = os.fdopen(requests_fd, "r", encoding="utf-8")
    results = os.fdopen(results_fd, "w", encoding="utf-8")
    module_name, _, function_name = handler_name.rpartition(".")
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:  # noqa: BLE001 - reported as Lambda reports an init error
        error_type = "Runtime.ImportModuleError" if isinstance(exc, ImportError) else f"Runtime.{type(exc).__name__}"
        error = _error(exc, error_type)
        error["errorMessage"] = f"Unable to import module '{module_name}': {exc}"
        _log_error(error)
        _write(results, {"init_error": error})
        return 1
    loaded = {"handler": _origin(module_name), "imagegen": _origin("imagegen"), "pydantic_core": None}
    loaded["pydantic_core"] = _origin("pydantic_core._pydantic_core")
    _write(results, {"ready": {"pid": os.getpid(), "loaded": loaded, "sys_path": sys.path}})

    for line in requests:
        request = json.loads(line)
        context = LambdaContext(request["context"], time.monotonic() + request["remaining_ms"] / 1000)
        try:
            result = handler(request["event"], context)
        except Exception as exc:  # noqa: BLE001 - any raise is the invocation's error
            error = _error(exc, request_id=context.aws_request_id, skip_frames=1)
            _log_error(error)
            _write(results, {"error": error})
            continue
        sys.stdout.flush()
        try:
            _write(results, {"result": result})
        except (TypeError, ValueError) as exc:
            error = _error(exc, "Runtime.MarshalError", request_id=context.aws_request_id, skip_frames=1)
            error["errorMessage"] = f"Unable to marshal response: {exc}"
            _log_error(error)
            _write(results, {"error": error})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
