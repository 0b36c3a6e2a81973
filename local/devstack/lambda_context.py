"""A stand-in for the context object the AWS Lambda Python runtime passes to a handler.

It mirrors ``awslambdaric.lambda_context.LambdaContext``: the same attribute names, and
``get_remaining_time_in_millis()`` counting down to a deadline fixed when the invocation starts.
The deadline is kept on the monotonic clock, so wall-clock jumps do not move it.

One detail is deliberately faithful: the real runtime reads ``memory_limit_in_mb`` from the
``AWS_LAMBDA_FUNCTION_MEMORY_SIZE`` environment variable, so it is a *string* (``"512"``), even though
Powertools' typing stub declares ``int``. Code that does arithmetic on it breaks in AWS too.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DEFAULT_ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-east-1"


@dataclass
class CognitoIdentity:
    """``context.identity``: always present; both fields are ``None`` outside the mobile SDKs."""

    cognito_identity_id: str | None = None
    cognito_identity_pool_id: str | None = None


@dataclass
class LambdaContext:
    """The handler's ``context`` argument (attribute names as in the AWS Lambda Python runtime)."""

    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: str
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    deadline_monotonic: float = field(repr=False)
    identity: CognitoIdentity = field(default_factory=CognitoIdentity)
    client_context: Any = None
    tenant_id: str | None = None

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function would time out; never negative."""
        remaining_ms = int((self.deadline_monotonic - time.monotonic()) * 1000)
        return max(remaining_ms, 0)


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def make_context(
    function_name: str,
    timeout_s: float,
    memory_mb: int = 512,
    *,
    account_id: str = DEFAULT_ACCOUNT_ID,
    region: str | None = None,
    aws_request_id: str | None = None,
) -> LambdaContext:
    """A fresh context for one invocation of ``function_name`` that times out after ``timeout_s``."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    region = region or _region()
    today = datetime.now(UTC).strftime("%Y/%m/%d")
    return LambdaContext(
        function_name=function_name,
        function_version="$LATEST",
        invoked_function_arn=f"arn:aws:lambda:{region}:{account_id}:function:{function_name}",
        memory_limit_in_mb=str(memory_mb),
        aws_request_id=aws_request_id or str(uuid.uuid4()),
        log_group_name=f"/aws/lambda/{function_name}",
        log_stream_name=f"{today}/[$LATEST]{uuid.uuid4().hex}",
        deadline_monotonic=time.monotonic() + timeout_s,
    )
