"""Settings: parsed once from the environment, failing fast with a message naming every bad variable."""

from __future__ import annotations

import pytest
from imagegen.errors import ConfigurationError
from imagegen.settings import VENDOR_API_URL, get_settings, load_http_settings, load_settings

REQUIRED = {"FLUX_SECRET_ID": "flux/subscription-key", "IMAGES_BUCKET": "images-bucket", "IMAGES_TABLE": "images"}


def test_settings_required_only_gives_documented_defaults() -> None:
    # Given only the required variables
    # When loaded
    settings = load_settings(REQUIRED)
    # Then the values are read and the defaults are the vendor's URL and the safe guard settings
    assert settings.flux_secret_id == "flux/subscription-key"
    assert settings.images_bucket == "images-bucket"
    assert settings.images_table == "images"
    assert settings.flux_api_url == VENDOR_API_URL
    assert settings.image_host_allowlist == ["pub-*.r2.dev"]
    assert settings.image_allow_http is False
    assert settings.image_allowed_private_networks == []
    assert settings.webhook_allow_http is False and settings.webhook_allowed_private_networks == []
    assert settings.max_image_bytes == 32 * 1024 * 1024
    assert settings.upstream_max_attempts == 4


def test_settings_missing_variables_are_all_named() -> None:
    # Given an empty environment
    # When loaded
    with pytest.raises(ConfigurationError) as caught:
        load_settings({})
    # Then the message names every missing variable by its environment name
    message = caught.value.message
    for name in ("FLUX_SECRET_ID", "IMAGES_BUCKET", "IMAGES_TABLE"):
        assert f"{name} is required" in message
    assert caught.value.code == "configuration_error"
    assert caught.value.status == 500


def test_settings_one_missing_variable_is_the_only_one_named() -> None:
    env = {k: v for k, v in REQUIRED.items() if k != "IMAGES_TABLE"}
    with pytest.raises(ConfigurationError) as caught:
        load_settings(env)
    assert "IMAGES_TABLE is required" in caught.value.message
    assert "FLUX_SECRET_ID" not in caught.value.message
    assert "IMAGES_BUCKET" not in caught.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_IMAGE_BYTES", "12"),
        ("MAX_IMAGE_BYTES", "lots"),
        ("UPSTREAM_MAX_ATTEMPTS", "0"),
        ("UPSTREAM_READ_TIMEOUT_SECONDS", "0"),
        ("FLUX_API_URL", "ftp://gateway.example/getData"),
        ("IMAGE_ALLOW_HTTP", "maybe"),
        ("PRESIGNED_URL_TTL_SECONDS", "30"),
        ("RETENTION_DAYS", "0"),
    ],
)
def test_settings_invalid_value_names_the_variable(name: str, value: str) -> None:
    # Given one variable with an invalid value
    # When loaded
    with pytest.raises(ConfigurationError) as caught:
        load_settings({**REQUIRED, name: value})
    # Then the message names that variable (not the Python field name)
    assert caught.value.message.startswith("invalid configuration: ")
    assert name in caught.value.message
    assert "is required" not in caught.value.message


def test_settings_errors_are_not_chained_to_pydantic() -> None:
    # Given an invalid environment, When loaded, Then the pydantic error (which echoes input values) is not chained
    with pytest.raises(ConfigurationError) as caught:
        load_settings({})
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ is True


def test_settings_parse_comma_separated_allowlist_and_booleans() -> None:
    # Given a comma-separated allowlist with spaces and empty items, and development flags
    env = {
        **REQUIRED,
        "IMAGE_HOST_ALLOWLIST": " pub-*.r2.dev, images.example.com ,,",
        "IMAGE_ALLOW_HTTP": "true",
        "IMAGE_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8, ::1/128",
        "FLUX_API_URL": "http://127.0.0.1:8081/getData",
        "UPSTREAM_MAX_ATTEMPTS": "2",
    }
    # When loaded
    settings = load_settings(env)
    # Then the list is split and trimmed and the strings are converted
    assert settings.image_host_allowlist == ["pub-*.r2.dev", "images.example.com"]
    assert settings.image_allow_http is True
    assert settings.image_allowed_private_networks == ["127.0.0.0/8", "::1/128"]
    assert settings.flux_api_url == "http://127.0.0.1:8081/getData"
    assert settings.upstream_max_attempts == 2


def test_settings_ignore_unrelated_variables_and_are_frozen() -> None:
    settings = load_settings({**REQUIRED, "PATH": "/usr/bin", "AWS_REGION": "us-east-1"})
    with pytest.raises(ValueError, match="frozen"):
        settings.images_bucket = "other"  # type: ignore[misc]


def test_settings_default_source_is_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the required variables in the process environment
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMAGES_BUCKET", "from-environ")
    get_settings.cache_clear()
    try:
        # When loaded without an explicit mapping, Then os.environ is read, once per container
        assert load_settings().images_bucket == "from-environ"
        first = get_settings()
        monkeypatch.setenv("IMAGES_BUCKET", "changed-later")
        assert get_settings() is first
        assert get_settings().images_bucket == "from-environ"
    finally:
        get_settings.cache_clear()


def test_http_settings_defaults_and_cors_list() -> None:
    assert load_http_settings({}).cors_allowed_origins == []
    assert load_http_settings({}).enable_docs is True
    http = load_http_settings({"CORS_ALLOWED_ORIGINS": "https://a.example, https://b.example", "ENABLE_DOCS": "false"})
    assert http.cors_allowed_origins == ["https://a.example", "https://b.example"]
    assert http.enable_docs is False


def test_http_settings_invalid_value_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="ENABLE_DOCS"):
        load_http_settings({"ENABLE_DOCS": "perhaps"})


def test_settings_refuse_a_budget_that_leaves_no_time_for_the_upstream():
    # Given reserves that eat the whole API budget
    env = {"FLUX_SECRET_ID": "s", "IMAGES_BUCKET": "bkt", "IMAGES_TABLE": "tbl", "API_BUDGET_SECONDS": "5"}
    # When the settings are loaded, Then the error says which variables clash
    with pytest.raises(ConfigurationError, match="API_BUDGET_SECONDS must exceed"):
        load_settings(env)


def test_settings_name_a_bad_private_network() -> None:
    with pytest.raises(ConfigurationError, match=r"IMAGE_ALLOWED_PRIVATE_NETWORKS .*'loopback' is not an IP network"):
        load_settings({**REQUIRED, "IMAGE_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8,loopback"})


def test_http_settings_enable_console_defaults_on_and_names_a_bad_value() -> None:
    assert load_http_settings({}).enable_console is True
    assert load_http_settings({"ENABLE_CONSOLE": "false"}).enable_console is False
    with pytest.raises(ConfigurationError, match="ENABLE_CONSOLE"):
        load_http_settings({"ENABLE_CONSOLE": "sometimes"})


def test_the_refill_keeps_time_for_one_whole_upstream_call_and_refuses_a_reserve_under_20_s():
    assert load_settings(REQUIRED).worker_refill_until_s == 64.0  # 60 s read timeout + 4 s mirror reserve
    assert load_settings({**REQUIRED, "WORKER_REFILL_RESERVE_SECONDS": "90"}).worker_refill_until_s == 90.0
    with pytest.raises(ConfigurationError) as refused:
        load_settings({**REQUIRED, "WORKER_REFILL_RESERVE_SECONDS": "5"})
    assert "WORKER_REFILL_RESERVE_SECONDS" in str(refused.value)
