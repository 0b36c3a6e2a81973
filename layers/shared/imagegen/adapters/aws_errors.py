"""Which failures of an AWS call say "the service is slow or unavailable now", not "this request is wrong".

botocore raises them (it retried already, in its standard mode): a read or connect timeout, a connection that failed
or closed, and the service answering it is throttled or failing (a 5xx, or a throttling code). A caller maps them to
a retryable answer (``503`` + ``Retry-After`` in the API) instead of an internal error. Classified by type and
error code, never by message text; botocore is not imported here (it is loaded whenever one of its errors exists).
"""

from __future__ import annotations

import sys

THROTTLING_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "SlowDown",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "InternalServerError",
        "InternalError",
        "TransactionInProgressException",
    }
)


def aws_unavailable(exc: BaseException) -> bool:
    """True for botocore's timeouts, connection failures, throttling and server-side errors."""
    exceptions = sys.modules.get("botocore.exceptions")
    if exceptions is None:
        return False
    transport = (
        exceptions.ReadTimeoutError,
        exceptions.ConnectTimeoutError,
        exceptions.EndpointConnectionError,
        exceptions.ConnectionClosedError,
    )
    if isinstance(exc, transport):
        return True
    if isinstance(exc, exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in THROTTLING_CODES or int(status or 0) >= 500
    return False
