"""What ``make run`` makes of its environment: ports, the functions' environment, the banner, the terminal log.

The stack is configured here without starting it (``parse_args`` + ``stack_from_environment`` are what
``python -m devstack`` runs; ``function_environment`` is what its functions get); the HTTP behaviour of the same
settings is in tests/integration/test_local_stack.py.
"""

from __future__ import annotations

import io
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from devstack.aws import LOOPBACK_NETWORKS, PASSTHROUGH, Seeded
from devstack.logs import LogRouter, function_log_level, parse_level, summarise
from devstack.stack import LocalStack, is_loopback_url, local_ports, parse_args, stack_from_environment

ROOT = Path(__file__).resolve().parents[2]
SEEDED = Seeded(
    secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:flux",
    webhook_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:webhook",
    jobs_queue_url="http://127.0.0.1:5001/123456789012/flux-images-jobs",
    jobs_dlq_url="http://127.0.0.1:5001/123456789012/flux-images-jobs-dlq",
    events_queue_url="http://127.0.0.1:5001/123456789012/flux-images-events",
)
LOOPBACK_UPSTREAM = "http://127.0.0.1:9911/flux-1-schnell/v1/getData"
VENDOR = "https://gateway.appypie.com/flux-1-schnell/v1/getData"


def functions_env(environ: dict[str, str]) -> dict[str, str]:
    """The functions' environment ``make run`` would give them with ``environ`` (an upstream other than the
    emulator, so nothing needs starting)."""
    stack = stack_from_environment(parse_args([], environ), environ)
    return stack.function_environment(SEEDED)


# ------------------------------------------------------------------------------------------------------ ports
def test_ports_default_to_the_documented_ones():
    assert local_ports({}) == {"PORT": 3000, "MOTO_PORT": 5001, "FLUX_EMULATOR_PORT": 8081, "MODERATION_PORT": 8082}


def test_one_port_moves_them_all():
    # Given a second stack started with PORT only
    ports = local_ports({"PORT": "3100"})
    # Then moto, the emulator and the moderation stand-in moved with it, keeping their offsets
    assert ports == {"PORT": 3100, "MOTO_PORT": 5101, "FLUX_EMULATOR_PORT": 8181, "MODERATION_PORT": 8182}


def test_a_port_set_explicitly_wins_over_the_derived_one():
    ports = local_ports({"PORT": "3100", "MOTO_PORT": "6000"})
    assert ports == {"PORT": 3100, "MOTO_PORT": 6000, "FLUX_EMULATOR_PORT": 8181, "MODERATION_PORT": 8182}


def test_port_zero_means_free_ports_for_all():
    assert local_ports({"PORT": "0"}) == {"PORT": 0, "MOTO_PORT": 0, "FLUX_EMULATOR_PORT": 0, "MODERATION_PORT": 0}


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PORT": "web"}, "PORT='web' is not a port number"),
        ({"PORT": "70000"}, "PORT would be 70000"),
        ({"PORT": "3000", "FLUX_EMULATOR_PORT": "70000"}, "FLUX_EMULATOR_PORT would be 70000"),
    ],
)
def test_a_bad_port_is_refused_naming_the_variable(environ, named):
    with pytest.raises(SystemExit) as refused:
        local_ports(environ)
    assert named in str(refused.value)


def test_the_command_line_defaults_come_from_the_ports():
    args = parse_args([], {"PORT": "3200"})
    assert (args.port, args.moto_port, args.emulator_port) == (3200, 5201, 8281)


# ------------------------------------------------------------------------------------- the functions' environment
def test_every_readme_variable_reaches_the_functions_whatever_the_upstream():
    # Given a developer's environment naming each function setting the README lists, with the real vendor
    environ = {
        "FLUX_API_URL": VENDOR,
        "IMAGE_HOST_ALLOWLIST": "images.example.com",
        "IMAGE_ALLOW_HTTP": "true",
        "IMAGE_ALLOWED_PRIVATE_NETWORKS": "10.1.0.0/16",
        "WEBHOOK_ALLOW_HTTP": "true",
        "WEBHOOK_ALLOWED_PRIVATE_NETWORKS": "192.168.7.0/24",
        "CORS_ALLOWED_ORIGINS": "https://app.example.com",
        "ENABLE_DOCS": "false",
        "POWERTOOLS_LOG_LEVEL": "DEBUG",
        "POWERTOOLS_METRICS_DISABLED": "false",
    }
    # When the stack builds the functions' environment
    env = functions_env(environ)
    # Then each is there exactly as given: none dropped, none replaced by a stack default
    for name, value in environ.items():
        assert env[name] == value, name


def test_a_loopback_upstream_gets_the_loopback_allowances_and_its_own_host():
    # Given another upstream on this machine (a fake or hostile one), with nothing else set
    env = functions_env({"FLUX_API_URL": LOOPBACK_UPSTREAM})
    # Then the mirror may fetch its http images from loopback, as with the emulator
    assert env["FLUX_API_URL"] == LOOPBACK_UPSTREAM
    assert env["IMAGE_ALLOW_HTTP"] == "true"
    assert env["IMAGE_ALLOWED_PRIVATE_NETWORKS"] == LOOPBACK_NETWORKS
    assert env["WEBHOOK_ALLOW_HTTP"] == "true"
    assert env["IMAGE_HOST_ALLOWLIST"] == "127.0.0.1"


def test_a_loopback_upstream_keeps_what_the_developer_set():
    env = functions_env(
        {"FLUX_API_URL": LOOPBACK_UPSTREAM, "IMAGE_ALLOW_HTTP": "false", "IMAGE_HOST_ALLOWLIST": "cdn.local"}
    )
    assert env["IMAGE_ALLOW_HTTP"] == "false"
    assert env["IMAGE_HOST_ALLOWLIST"] == "cdn.local"
    assert env["IMAGE_ALLOWED_PRIVATE_NETWORKS"] == LOOPBACK_NETWORKS  # not set: the loopback default


def test_a_remote_upstream_keeps_the_deployed_guards():
    env = functions_env({"FLUX_API_URL": VENDOR})
    assert env["IMAGE_ALLOW_HTTP"] == env["WEBHOOK_ALLOW_HTTP"] == "false"
    assert env["IMAGE_ALLOWED_PRIVATE_NETWORKS"] == env["WEBHOOK_ALLOWED_PRIVATE_NETWORKS"] == ""
    assert env["IMAGE_HOST_ALLOWLIST"] == "pub-*.r2.dev"


def test_an_empty_variable_counts_as_unset():
    env = functions_env({"FLUX_API_URL": VENDOR, "IMAGE_HOST_ALLOWLIST": "", "CORS_ALLOWED_ORIGINS": ""})
    assert env["IMAGE_HOST_ALLOWLIST"] == "pub-*.r2.dev"
    assert env["CORS_ALLOWED_ORIGINS"] == "http://localhost:3000"


def test_the_subscription_key_and_the_emulators_key_are_separate_settings():
    stack = stack_from_environment(parse_args([], {}), {"FLUX_API_KEY": "mine", "FLUX_EMULATOR_REQUIRE_KEY": "k"})
    assert stack.resources.secret_value == "mine"
    assert stack.emulator is not None and stack.emulator_checks_key
    assert stack.emulator._authorized({"Ocp-Apim-Subscription-Key": "k"})  # type: ignore[arg-type]
    assert not stack.emulator._authorized({"Ocp-Apim-Subscription-Key": "mine"})  # type: ignore[arg-type]
    # without it the emulator accepts whatever key was stored (the first ten minutes need no key at all)
    default = stack_from_environment(parse_args([], {}), {"FLUX_API_KEY": "mine"})
    assert default.emulator is not None and not default.emulator_checks_key
    assert default.emulator._authorized({"Ocp-Apim-Subscription-Key": "mine"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8081/x", True),
        ("http://127.5.6.7/x", True),
        ("http://[::1]:9/x", True),
        ("http://localhost:9/x", True),
        ("https://gateway.appypie.com/x", False),
        ("http://10.0.0.1/x", False),
        ("http://169.254.169.254/x", False),
    ],
)
def test_which_upstreams_count_as_loopback(url, loopback):
    assert is_loopback_url(url) is loopback


# ------------------------------------------------------------------------------------------------------ banner
def banner_of(environ: dict[str, str]) -> str:
    stack = stack_from_environment(parse_args([], environ), environ)
    stack.env = stack.function_environment(SEEDED)
    return "\n".join([stack.upstream_line(), *stack.guards()])


def test_the_banner_says_what_is_relaxed_for_a_loopback_upstream():
    text = banner_of({"FLUX_API_URL": LOOPBACK_UPSTREAM})
    assert "Relaxed        mirror: http (IMAGE_ALLOW_HTTP), 127.0.0.0/8,::1/128" in text
    assert "webhooks: http (WEBHOOK_ALLOW_HTTP)" in text


def test_the_banner_says_nothing_is_relaxed_against_the_vendor():
    text = banner_of({"FLUX_API_URL": VENDOR, "FLUX_API_KEY": "sk-secret-value"})
    assert "Guards         as deployed" in text and "Relaxed" not in text
    assert "sk-secret-value" not in text  # the subscription key never reaches the terminal


def test_the_banner_names_a_relaxation_set_by_hand():
    text = banner_of({"FLUX_API_URL": VENDOR, "IMAGE_ALLOWED_PRIVATE_NETWORKS": "10.1.0.0/16"})
    assert "mirror: 10.1.0.0/16 (IMAGE_ALLOWED_PRIVATE_NETWORKS)" in text


# ---------------------------------------------------------------------------------------------- terminal log
def record(level: str, message: str = "image stored", **extra: Any) -> str:
    return json.dumps({"level": level, "message": message, "service": "image-api", "image_id": "img_1", **extra})


def test_terminal_hides_info_records_and_shows_warnings_short():
    assert summarise(record("INFO"), 30) is None
    shown = summarise(record("ERROR", "unexpected error", exception_name="KeyError", exception="Traceback…"), 30)
    assert shown == "ERROR   image-api: unexpected error (KeyError)"


def test_terminal_passes_the_stacks_own_lines_and_hides_metrics_documents():
    assert summarise("[gateway] POST /v1/images 201 12.0ms", 30) == "[gateway] POST /v1/images 201 12.0ms"
    assert summarise(json.dumps({"_aws": {"CloudWatchMetrics": []}, "ColdStart": [1.0]}), 30) is None
    assert summarise("{not json", 30) == "{not json"


def test_log_router_writes_every_line_to_the_file_and_a_summary_to_the_terminal():
    # Given a router at the default terminal level
    file, terminal = io.StringIO(), io.StringIO()
    router = LogRouter(file, terminal, parse_level(None))
    # When a function logs two INFO records and a warning, partly in pieces, and the gateway one line
    info = record("INFO")
    router.write(info[:10])
    router.write(info[10:] + "\n" + record("INFO", "generating image") + "\n")
    router.write(record("WARNING", "upstream retry") + "\n[gateway] POST /v1/images 201 9.0ms\n")
    router.flush()
    # Then the file has all four lines as written, the terminal only the two short ones
    assert file.getvalue().splitlines()[0] == info
    assert len(file.getvalue().splitlines()) == 4
    assert terminal.getvalue().splitlines() == [
        "WARNING image-api: upstream retry",
        "[gateway] POST /v1/images 201 9.0ms",
    ]


def test_log_level_debug_shows_every_record_and_the_file_gets_debug_too():
    file, terminal = io.StringIO(), io.StringIO()
    router = LogRouter(file, terminal, parse_level("debug"))
    router.write(record("INFO") + "\n")
    assert terminal.getvalue() == "INFO    image-api: image stored\n"
    assert function_log_level("DEBUG") == "DEBUG"
    assert function_log_level("WARNING") == "INFO"  # the file stays complete when the terminal is quiet


def test_a_bad_log_level_is_refused_naming_the_variable():
    with pytest.raises(SystemExit) as refused:
        parse_level("loud")
    assert "LOG_LEVEL='loud'" in str(refused.value)


# ------------------------------------------------------------------------------------------------- the README
def test_every_variable_the_readme_names_for_make_run_is_read_by_the_stack():
    # Given the README's table of make run's variables
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### The local stack: `make run`", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    names = {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split(" | ")[0])}
    # Then each is read by the stack's code: passed to the functions, or read by make run's program itself
    source = "\n".join(
        (ROOT / "local/devstack" / module).read_text(encoding="utf-8") for module in ("stack.py", "aws.py", "events.py")
    )
    assert len(names) >= 15, names
    unread = sorted(name for name in names if name not in PASSTHROUGH and f'"{name}"' not in source)
    assert not unread, f"named in the README, read nowhere: {unread}"


def test_a_high_port_leaves_the_others_to_any_free_port():
    # Given a PORT whose offsets would pass the last port (a free port picked by a test, say)
    from devstack.stack import local_ports

    ports = local_ports({"PORT": "64000"})

    # Then the API keeps it, and each other port that would pass 65535 is any free one (0), not an error
    assert ports["PORT"] == 64000
    assert ports["MOTO_PORT"] == 0
    assert ports["FLUX_EMULATOR_PORT"] == 0
    assert ports["MODERATION_PORT"] == 0
    assert local_ports({"PORT": "60000"})["MOTO_PORT"] == 62001


@pytest.mark.parametrize(
    ("keyword", "variable", "server"),
    [
        ("port", "PORT", "the local API Gateway"),
        ("moto_port", "MOTO_PORT", "moto"),
        ("emulator_port", "FLUX_EMULATOR_PORT", "the Flux emulator"),
        ("moderation_port", "MODERATION_PORT", "the moderation stand-in"),
        ("console_port", "CONSOLE_PORT", "the web console"),
    ],
)
def test_a_taken_port_is_named_before_anything_starts(keyword, variable, server):
    # Given one of the stack's ports held by another program
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = LocalStack(**{keyword: port})
        try:
            # When the stack starts
            with pytest.raises(OSError, match=re.escape(f"{server} cannot listen on 127.0.0.1:{port}")) as refused:
                stack.start()
            # Then it names the variable that moves it, and nothing was started first (no moto process, no server)
            assert f"(set {variable} to another port)" in str(refused.value)
            assert stack.aws._process is None
            assert stack.gateway is None and not stack.pollers
        finally:
            stack.stop()  # what `make run` does after a failed start (nothing to stop, unless this test fails)
