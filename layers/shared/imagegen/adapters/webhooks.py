"""Signed webhooks (Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature), signed with the
``standardwebhooks`` library and delivered only to https URLs whose host resolves to a public address (the
network guard, ``adapters/netguard.py``, as for the image mirror). This module words the guard's refusals for the
webhook's record ("webhook URL ...", "webhook host ..."): a refused webhook is reported undelivered, never raised."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, assert_never

import requests
from aws_lambda_powertools import Logger
from standardwebhooks.webhooks import Webhook

from imagegen.adapters.netguard import AddressRefusedError, Refusal, RefusedError, UrlGuard, guarded_session
from imagegen.retry import Retrying, RetryPolicy

logger = Logger(child=True)


def signer(secret: str) -> Webhook:
    """``whsec_<base64>`` secrets as Standard Webhooks defines them; any other string is the key's bytes."""
    if secret.startswith("whsec_"):
        return Webhook(secret)
    return Webhook(base64.b64encode(secret.encode("utf-8")).decode("ascii"))


def webhook_refusal(exc: RefusedError) -> str:
    """The network guard's refusal in the webhook's words: the reason of an undelivered webhook."""
    match exc.reason:
        case Refusal.SCHEME:
            return f"webhook URL scheme {exc.value or '(none)'!r} is not allowed (https only)"
        case Refusal.NO_HOST:
            return "webhook URL has no host"
        case Refusal.CREDENTIALS:
            return "webhook URL must not carry credentials"
        case Refusal.HOST_NOT_ALLOWED:
            return f"webhook host {exc.value!r} is not on the allowlist"
        case Refusal.UNRESOLVABLE:
            return f"webhook host {exc.value!r} does not resolve"
        case Refusal.NON_PUBLIC_ADDRESS:
            return f"webhook host {exc.value!r} resolves to a non-public address"
        case Refusal.TOO_MANY_REDIRECTS:
            return f"more than {exc.value} redirects while delivering the webhook"
        case _:
            assert_never(exc.reason)


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    attempts: int
    status_code: int | None = None
    reason: str = ""


class WebhookSender:
    def __init__(
        self,
        secret_provider: Callable[[], str],
        *,
        allow_http: bool = False,
        allowed_private_networks: Iterable[str] = (),
        attempts: int = 4,
        backoff_base_s: float = 1.0,
        timeout_s: float = 5.0,
        budget_s: float = 20.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret_provider = secret_provider
        self._guard = UrlGuard(("*",), allow_http=allow_http)
        self._session = guarded_session(allowed_private_networks)
        # All attempts together within budget_s (the completing invocation must not time out on them); a wait is
        # only started when a whole attempt (timeout_s) still fits after it.
        self._policy = RetryPolicy(
            attempts=attempts, base_s=backoff_base_s, cap_s=backoff_base_s * 2 ** (attempts - 1), reserve_s=timeout_s
        )
        self._timeout_s = timeout_s
        self._budget_s = budget_s
        self._sleep = sleep
        self._clock = clock

    def headers(self, message_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
        timestamp = (now or datetime.now(UTC)).replace(microsecond=0)
        signature = signer(self._secret_provider()).sign(msg_id=message_id, timestamp=timestamp, data=body)
        return {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": signature,
            "User-Agent": "flux-image-service-webhooks/1",
        }

    def deliver(self, url: str, message_id: str, payload: dict[str, Any]) -> Delivery:
        """POST ``payload`` with retries (exponential backoff with full jitter, imagegen.retry); never raises: a
        delivery that failed is reported as such (``delivered`` False), never as delivered."""
        try:
            self._guard.check(url)
        except RefusedError as exc:
            return Delivery(False, 0, reason=webhook_refusal(exc))
        body = json.dumps(payload, separators=(",", ":"))
        last = Delivery(False, 0)
        give_up_at = self._clock() + self._budget_s
        retrying = Retrying(
            self._policy, sleep=self._sleep, clock=self._clock, remaining=lambda: give_up_at - self._clock()
        )
        for attempt in retrying:
            if self._clock() + self._timeout_s > give_up_at:
                break
            try:
                # Signed per attempt: a retry carries a fresh timestamp, so receivers' replay windows hold.
                # Never a redirect: a Location was not checked by the guard (scheme, credentials, host), and a
                # signed payload goes to the URL the job named or nowhere, as the usual webhook senders do.
                response = self._session.post(
                    url,
                    data=body.encode("utf-8"),
                    headers=self.headers(message_id, body),
                    timeout=self._timeout_s,
                    allow_redirects=False,
                )
                response.close()
                if 200 <= response.status_code < 300:
                    return Delivery(True, attempt, response.status_code)
                if 300 <= response.status_code < 400:  # the receiver's configuration: another try will not help
                    return Delivery(
                        False, attempt, response.status_code, f"HTTP {response.status_code}: redirects are not followed"
                    )
                last = Delivery(False, attempt, response.status_code, f"HTTP {response.status_code}")
                if 400 <= response.status_code < 500 and response.status_code not in (408, 409, 425, 429):
                    return last  # the receiver refuses this payload: retrying will not change its mind
            except AddressRefusedError as exc:
                return Delivery(False, attempt, reason=webhook_refusal(exc))
            except requests.exceptions.RequestException as exc:
                last = Delivery(False, attempt, reason=type(exc).__name__)
            except Exception as exc:
                logger.exception("webhook delivery failed")
                return Delivery(False, attempt, reason=type(exc).__name__)
            if not retrying.wait():
                break
        logger.warning("webhook not delivered", attempts=last.attempts, reason=last.reason)
        return last
