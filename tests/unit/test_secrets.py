"""The subscription key: plain-string or JSON secrets, forced refresh, and never a trace of the key in errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from imagegen.adapters.secrets import SubscriptionKeyProvider, parse_subscription_key
from imagegen.errors import ConfigurationError
from moto import mock_aws
from support.secrets_under_test import UNIT_SUBSCRIPTION_KEY

KEY = UNIT_SUBSCRIPTION_KEY
SECRET_ID = "flux/subscription-key"


@dataclass
class FakeSecrets:
    """Stands in for Powertools' SecretsProvider: answers from a list, records every call."""

    answers: list[Any]
    calls: list[dict[str, Any]] = field(default_factory=list)

    def get(self, name: str, max_age: int | None = None, force_fetch: bool = False, **kwargs: Any) -> Any:
        self.calls.append({"name": name, "max_age": max_age, "force_fetch": force_fetch, **kwargs})
        answer = self.answers[min(len(self.calls), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _provider(*answers: Any, max_age_s: int = 300) -> tuple[SubscriptionKeyProvider, FakeSecrets]:
    fake = FakeSecrets(list(answers))
    return SubscriptionKeyProvider(SECRET_ID, max_age_s=max_age_s, provider=fake), fake  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw",
    [
        KEY,
        f"  {KEY}\n",
        KEY.encode(),
        json.dumps({"subscription_key": KEY}),
        json.dumps({"subscription_key": f" {KEY} "}),
    ],
    ids=["plain", "padded", "bytes", "json", "json-padded"],
)
def test_secrets_plain_and_json_secrets_give_the_key(raw: str | bytes) -> None:
    # Given a secret stored as a plain string, bytes or JSON {"subscription_key"}
    # When parsed, Then the bare key comes out
    assert parse_subscription_key(raw) == KEY


def test_secrets_json_with_other_fields_uses_subscription_key() -> None:
    raw = json.dumps({"note": "rotated monthly", "subscription_key": KEY, "old": "sk-old"})
    assert parse_subscription_key(raw) == KEY


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   \n",
        json.dumps({"key": KEY}),
        json.dumps({"subscription_key": ""}),
        json.dumps({"subscription_key": "   "}),
        json.dumps({"subscription_key": 12345}),
        json.dumps({"subscription_key": None}),
        '{"subscription_key": "' + KEY + '",}',
    ],
    ids=["empty", "blank", "wrong-field", "empty-key", "blank-key", "number", "null", "bad-json"],
)
def test_secrets_unusable_secret_raises_configuration_error_without_the_value(
    raw: str, assert_secret_absent: Callable[[BaseException, str], None]
) -> None:
    # Given a secret that holds no usable key
    # When parsed
    with pytest.raises(ConfigurationError) as caught:
        parse_subscription_key(raw)
    # Then a configuration error says so, and nothing in it (or chained to it) repeats the secret
    assert caught.value.code == "configuration_error"
    assert_secret_absent(caught.value, KEY)
    assert caught.value.__cause__ is None


def test_secrets_provider_reads_with_cache_then_forces_a_fetch() -> None:
    # Given a secret rotated between two reads
    keys, fake = _provider(KEY, json.dumps({"subscription_key": "sk-rotated"}), max_age_s=120)
    # When read normally, then with force_refresh
    first = keys()
    second = keys(force_refresh=True)
    # Then the first read allows the cache (max_age) and the second bypasses it
    assert (first, second) == (KEY, "sk-rotated")
    assert fake.calls == [
        {"name": SECRET_ID, "max_age": 120, "force_fetch": False},
        {"name": SECRET_ID, "max_age": 120, "force_fetch": True},
    ]


def test_secrets_provider_positional_flag_forces_a_fetch() -> None:
    # Given the FluxClient's calling convention (a positional bool)
    keys, fake = _provider(KEY)
    keys(True)
    assert fake.calls[0]["force_fetch"] is True


def test_secrets_provider_read_failure_is_a_configuration_error() -> None:
    # Given Secrets Manager refusing the read
    keys, _ = _provider(GetParameterError("AccessDeniedException when calling GetSecretValue"))
    # When the key is asked for
    with pytest.raises(ConfigurationError) as caught:
        keys()
    # Then a configuration error is raised, chained to the library error
    assert "could not read the subscription key" in caught.value.message
    assert isinstance(caught.value.__cause__, GetParameterError)


def test_secrets_provider_none_value_is_a_configuration_error() -> None:
    keys, _ = _provider(None)
    with pytest.raises(ConfigurationError, match="has no value"):
        keys()


def test_secrets_provider_repr_never_shows_the_key() -> None:
    keys, _ = _provider(KEY)
    assert keys() == KEY
    assert KEY not in repr(keys)
    assert KEY not in str(keys)
    assert SECRET_ID in repr(keys)


def test_secrets_real_secrets_provider_caches_until_forced() -> None:
    # Given a real Secrets Manager secret (moto) read through Powertools' SecretsProvider
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        client.create_secret(Name=SECRET_ID, SecretString=json.dumps({"subscription_key": KEY}))
        keys = SubscriptionKeyProvider(SECRET_ID, max_age_s=300, provider=SecretsProvider(boto3_client=client))
        assert keys() == KEY
        # When the secret is rotated
        client.put_secret_value(SecretId=SECRET_ID, SecretString="sk-rotated")
        # Then a normal read still answers from the cache, and a forced read picks up the new key
        assert keys() == KEY
        assert keys(force_refresh=True) == "sk-rotated"
        assert keys() == "sk-rotated"


def test_secrets_threads_starting_together_read_the_secret_once() -> None:
    # Given a real secret read through Powertools' SecretsProvider, whose first read lasts until a second read
    # starts (or half a second), and eight threads asking for the key at once on a cold cache
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        client.create_secret(Name=SECRET_ID, SecretString=KEY)
        read = client.get_secret_value
        reads: list[str] = []
        second_read = threading.Event()

        def slow_read(**kwargs: Any) -> Any:
            reads.append(kwargs["SecretId"])
            if len(reads) > 1:
                second_read.set()
            else:
                second_read.wait(0.5)
            return read(**kwargs)

        client.get_secret_value = slow_read  # type: ignore[method-assign]
        keys = SubscriptionKeyProvider(SECRET_ID, max_age_s=300, provider=SecretsProvider(boto3_client=client))
        answers: list[str] = []
        threads = [threading.Thread(target=lambda: answers.append(keys())) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    # Then every thread has the key, and Secrets Manager was read once: the others found it in the cache
    assert answers == [KEY] * 8
    assert reads == [SECRET_ID]


def test_secrets_real_missing_secret_is_a_configuration_error() -> None:
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        keys = SubscriptionKeyProvider("does/not/exist", provider=SecretsProvider(boto3_client=client))
        with pytest.raises(ConfigurationError) as caught:
            keys()
        assert isinstance(caught.value.__cause__, GetParameterError)
