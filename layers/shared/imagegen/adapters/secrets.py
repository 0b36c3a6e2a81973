"""The Flux Schnell subscription key, read from Secrets Manager through Powertools Parameters.

Powertools caches the value across warm invocations (``max_age``); ``force_refresh=True`` bypasses the cache,
which is how a rotated key is picked up after the upstream answers 401/403 — no redeploy needed. Its cache has no
single flight: items starting together in a cold invocation (``WorkerThreads`` > 1) would each miss it and each
read the secret, so reads go one at a time here and the others find the first one's value in the cache.
The key is never logged, and no error message here contains it.
"""

from __future__ import annotations

import json
import threading

from aws_lambda_powertools.utilities.parameters import SecretsProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

from imagegen.errors import ConfigurationError

JSON_FIELD = "subscription_key"


def parse_subscription_key(raw: str | bytes) -> str:
    """Accept a plain-string secret or JSON ``{"subscription_key": "..."}``; the key must be one line of
    printable ASCII (it travels in an HTTP header; anything else would be refused there, quoting it)."""
    key = _parse(raw)
    if not key.isascii() or not key.isprintable():
        raise ConfigurationError("the subscription key contains characters an HTTP header cannot carry")
    return key


def _parse(raw: str | bytes) -> str:
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    text = text.strip()
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError:
            raise ConfigurationError("the subscription key secret is neither a plain string nor valid JSON") from None
        key = document.get(JSON_FIELD) if isinstance(document, dict) else None
        if not isinstance(key, str) or not key.strip():
            raise ConfigurationError(f"the subscription key secret is JSON without a non-empty {JSON_FIELD!r}")
        return key.strip()
    if not text:
        raise ConfigurationError("the subscription key secret is empty")
    return text


class SubscriptionKeyProvider:
    """Callable returning the current subscription key; ``force_refresh=True`` re-reads the secret."""

    def __init__(self, secret_id: str, *, max_age_s: int = 300, provider: SecretsProvider | None = None) -> None:
        self._secret_id = secret_id
        self._max_age_s = max_age_s
        self._provider = provider or SecretsProvider()
        self._reading = threading.Lock()  # one read at a time: a cold cache is filled once, not once per thread

    def __call__(self, force_refresh: bool = False) -> str:
        try:
            with self._reading:
                raw = self._provider.get(self._secret_id, max_age=self._max_age_s, force_fetch=force_refresh)
        except GetParameterError as exc:
            # The boto error names the secret and the reason, never the value; keep it out of the answer anyway.
            raise ConfigurationError("could not read the subscription key from Secrets Manager") from exc
        if raw is None:
            raise ConfigurationError("the subscription key secret has no value")
        return parse_subscription_key(raw)  # type: ignore[arg-type]

    def __repr__(self) -> str:  # never show the cached value
        return f"SubscriptionKeyProvider(secret_id={self._secret_id!r})"
