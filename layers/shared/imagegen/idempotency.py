"""``Idempotency-Key`` for the POST routes, with Powertools Idempotency on its DynamoDB table.

The key is scoped per API key and per operation; the request body is the payload Powertools validates, so the
same key with a different body is refused instead of answered with someone else's result. Only successful
answers are stored (Powertools deletes the in-progress record when the work raises), and they are stored as
the HTTP answer itself: a retry gets the original status, body and headers and nothing new is generated, plus
``Idempotent-Replayed: true`` (added by Powertools' ``response_hook``, called only when a stored answer is
returned) so the caller can tell a replay from a first answer.
Powertools is imported when the first keyed request arrives, not at cold start.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from imagegen.errors import ConflictError, InvalidRequestError, ServiceError

MAX_KEY_LENGTH = 255
# Printable ASCII without a space at either end (HTTP trims a header value's outer spaces): the rule the API's
# header declares (functions/api publishes the same pattern in its spec), and the client's (flux_images.idempotency).
KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"
REPLAYED_HEADER = "Idempotent-Replayed"

Answer = dict[str, Any]  # {"status": int, "body": ..., "headers": {...}}


def validate_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not re.fullmatch(KEY_PATTERN, key):
        raise InvalidRequestError(
            f"must be 1-{MAX_KEY_LENGTH} printable ASCII characters, without a space at either end",
            field="Idempotency-Key",
            location="header",
        )
    return key


def mark_replayed(response: Any, idempotent_data: Any = None) -> Any:
    """Powertools' ``response_hook`` (its parameter names): the stored answer, with ``Idempotent-Replayed: true``
    among its headers."""
    if not isinstance(response, dict):
        return response
    return {**response, "headers": {**(response.get("headers") or {}), REPLAYED_HEADER: "true"}}


class IdempotencyKeyReusedError(ServiceError):
    status = 422
    code = "idempotency_key_reused"


class IdempotentRunner:
    def __init__(self, table_name: str, ttl_s: int, dynamodb_client: Any) -> None:
        from aws_lambda_powertools.utilities.idempotency import (
            DynamoDBPersistenceLayer,
            IdempotencyConfig,
            idempotent_function,
        )

        self.config = IdempotencyConfig(
            event_key_jmespath="[scope, operation, key]",
            payload_validation_jmespath="body",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=ttl_s,
            hash_function="sha256",
            response_hook=mark_replayed,
        )
        persistence = DynamoDBPersistenceLayer(table_name=table_name, boto3_client=dynamodb_client)

        @idempotent_function(data_keyword_argument="command", persistence_store=persistence, config=self.config)
        def run(command: dict[str, Any], execute: Callable[[], Answer]) -> Answer:
            return execute()

        self._run = run

    def __call__(
        self,
        *,
        scope: str,
        operation: str,
        key: str,
        body: Any,
        execute: Callable[[], Answer],
        lambda_context: Any = None,
    ) -> Answer:
        from aws_lambda_powertools.utilities.idempotency.exceptions import (
            IdempotencyAlreadyInProgressError,
            IdempotencyValidationError,
        )

        if lambda_context is not None:
            self.config.register_lambda_context(lambda_context)
        command = {"scope": scope, "operation": operation, "key": validate_key(key), "body": body}
        try:
            return self._run(command=command, execute=execute)
        except IdempotencyValidationError:
            raise IdempotencyKeyReusedError(
                "this Idempotency-Key was already used with a different request body; use a new key"
            ) from None
        except IdempotencyAlreadyInProgressError:
            raise ConflictError(
                "a request with this Idempotency-Key is still being processed; retry when it has finished",
                code="idempotency_in_progress",
                retry_after=1,
            ) from None
