"""The CLI's copy of the service's rules, held to the service's own.

The ``flux-images`` CLI and its client are installed without the service's code, so they restate its rules: the
request checks of ``flux_images_cli.inputs`` (one ``POST /v1/images`` body per line of a prompts file), the
Idempotency-Key rule of ``flux_images.idempotency`` and the documents ``flux_images.models`` reads. Here the values
come from the service's side (the bounds and enums of ``ImageRequest``'s schema, the published header pattern),
and each is given to both sides: they must accept and refuse the same ones, and name the same fields when they
refuse.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, get_args

import pytest
from flux_images import idempotency as client_idempotency
from flux_images import models as client_models
from flux_images_cli import inputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imagegen import idempotency as service_idempotency
from imagegen import models
from imagegen.errors import InvalidRequestError
from imagegen.models import ImageRequest, JobRequest
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ImageRequest.model_json_schema()["properties"]
# A job item makes one image and is fetched by URL: response_format has one value there, and the CLI leaves it
# to the service's default (its lines have no such field). Every other field of the model is the CLI's too.
NOT_IN_CLI = {"response_format"}


def _rules(name: str) -> dict[str, Any]:
    """The schema of field ``name`` without its null branch."""
    schema = SCHEMA[name]
    for branch in schema.get("anyOf", []):
        if branch.get("type") != "null":
            return branch
    return schema


def _nullable(name: str) -> bool:
    return any(branch.get("type") == "null" for branch in SCHEMA[name].get("anyOf", []))


# ------------------------------------------------------------------------------------------------ the values
def _integer_values(rules: dict[str, Any]) -> list[Any]:
    low, high, step = rules["minimum"], rules["maximum"], rules.get("multipleOf", 1)
    values = {low - 1, low, low + 1, high - 1, high, high + 1, low + step, high - step, 0, -1, 2**64}
    values |= {low + step // 2, low + step + 1} if step > 1 else set()  # between two multiples
    return [*sorted(values), float(low), str(low), True, False, [], {}]


def _number_values(rules: dict[str, Any]) -> list[Any]:
    low, high = rules["minimum"], rules["maximum"]
    values = [low, math.nextafter(low, 0), math.nextafter(low, math.inf), high, math.nextafter(high, math.inf)]
    values += [math.nextafter(high, 0), 1, 1.0, int(high), 0, -1.0, math.nan, math.inf, -math.inf]
    return [*values, str(low), True, [], {}]


def _enum_values(rules: dict[str, Any]) -> list[Any]:
    allowed = rules["enum"]
    return [*allowed, *(value.upper() for value in allowed), f" {allowed[0]}", "", "other", 1, True, [allowed[0]]]


def _prompt_values(rules: dict[str, Any]) -> list[Any]:
    most = rules["maxLength"]
    return [
        "a",
        "x" * most,
        "x" * (most + 1),
        " " * (most - 1) + "x",
        "",
        " ",
        "\t\n",
        "\u3000",  # ideographic space: blank too
        "\u00e9" * most,  # characters, not bytes
        "snow \ud800",  # a lone surrogate, as a JSON "\ud800" escape gives
        "\U0001f600",
        1,
        True,
        [],
        {},
    ]


def field_values(name: str) -> list[Any]:
    """Values at and around every bound of field ``name`` (from the model's schema), wrong types, and null."""
    rules = _rules(name)
    if name == "prompt":
        values = _prompt_values(rules)
    elif "enum" in rules:
        values = _enum_values(rules)
    elif rules.get("type") == "integer":
        values = _integer_values(rules)
    else:
        assert rules.get("type") == "number", f"{name}: a field of a kind this test does not generate: {rules}"
        values = _number_values(rules)
    return [*values, None]


CLI_FIELDS = [name for name in SCHEMA if name not in NOT_IN_CLI]
# What the cross-field rules need to be met or broken: a partner for every field that has one.
PARTNERS: list[dict[str, Any]] = [
    {},
    {"aspect_ratio": "16:9"},
    {"aspect_ratio": "1:1", "megapixels": 4},
    {"output_format": "jpeg"},
    {"output_format": "png"},
    {"width": 512},
    {"width": 512, "height": 768},
]


# ------------------------------------------------------------------------------------------------ the verdicts
def service_verdict(line: dict[str, Any]) -> set[str]:
    """The fields ``POST /v1/images`` names in its 422 for this body (empty: accepted)."""
    try:
        ImageRequest.model_validate(line)
    except ValidationError as exc:
        return {str(error["loc"][0]) if error["loc"] else "<body>" for error in exc.errors()}
    return set()


PROBLEM = re.compile(r"^.+?:(?P<line>\d+): (?P<field>[^:]+): ")


def cli_verdicts(tmp_path: Path, lines: list[dict[str, Any]]) -> tuple[list[set[str]], list[inputs.Item]]:
    """The fields the CLI names for each line of a prompts file holding ``lines`` (empty: accepted), and the items
    it makes of the lines it accepts (read again without the others: a refused line refuses the whole file)."""
    path = tmp_path / "prompts.jsonl"
    # json.dumps writes NaN and Infinity, which json.loads (the CLI's reader) reads back: the values go through.
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    named: list[set[str]] = [set() for _ in lines]
    try:
        inputs.load_items(str(path), [], {}, fmt="jsonl")
    except inputs.InputError as exc:
        for problem in exc.problems:
            found = PROBLEM.match(problem)
            assert found, f"a problem that names no line and field: {problem!r}"
            named[int(found["line"]) - 1].add(found["field"])
    accepted = [line for line, fields in zip(lines, named, strict=True) if not fields]
    if not accepted:
        return named, []
    path.write_text("\n".join(json.dumps(line) for line in accepted) + "\n", encoding="utf-8")
    return named, inputs.load_items(str(path), [], {}, fmt="jsonl")


def assert_parity(tmp_path: Path, lines: list[dict[str, Any]]) -> None:
    named, items = cli_verdicts(tmp_path, lines)
    differences = [
        (line, cli, service)
        for line, cli in zip(lines, named, strict=True)
        if cli != (service := service_verdict(line))
    ]
    assert not differences, "\n".join(f"{line!r}: CLI names {cli}, the service {svc}" for line, cli, svc in differences)
    # What the CLI sends for the lines it accepts is a job the service takes (num_images made into items).
    if items:
        JobRequest.model_validate({"items": [item.request for item in items]})


# ------------------------------------------------------------------------------------------------ the rules
def test_the_cli_knows_every_field_of_the_request_model() -> None:
    assert set(inputs.FIELDS) == set(CLI_FIELDS)
    assert set(inputs.INT_FIELDS) == {name for name in CLI_FIELDS if _rules(name).get("type") == "integer"}
    nullable = {name for name in CLI_FIELDS if _nullable(name)}
    assert nullable == inputs.NULLABLE


def test_the_cli_limits_are_the_services() -> None:
    assert inputs.ASPECT_RATIOS == get_args(models.AspectRatio) == tuple(_rules("aspect_ratio")["enum"])
    assert inputs.OUTPUT_FORMATS == get_args(models.OutputFormat) == tuple(_rules("output_format")["enum"])
    prompt = _rules("prompt")
    assert prompt["maxLength"] == inputs.MAX_PROMPT_CHARS
    assert inputs.MAX_SEED == models.MAX_SEED == _rules("seed")["maximum"]
    assert inputs.MAX_NUM_IMAGES == models.MAX_NUM_IMAGES == _rules("num_images")["maximum"]
    assert inputs.MAX_ITEMS_PER_JOB == models.MAX_JOB_ITEMS
    assert inputs.MAX_LINES_PER_UPLOAD == models.MAX_UPLOAD_LINES
    assert inputs.MAX_METADATA_BYTES == models.MAX_METADATA_BYTES
    assert inputs.MAX_IDEMPOTENCY_KEY == client_idempotency.MAX_KEY_LENGTH == service_idempotency.MAX_KEY_LENGTH


@pytest.mark.parametrize("name", CLI_FIELDS)
def test_each_field_at_and_around_its_bounds(tmp_path: Path, name: str) -> None:
    """Every value of the field, next to each partner the cross-field rules look at: one prompts file a field."""
    base = {"prompt": "a lighthouse"}
    lines = [{**base, **partner, name: value} for value in field_values(name) for partner in PARTNERS]
    assert_parity(tmp_path, lines)


def test_the_values_reach_both_verdicts(tmp_path: Path) -> None:
    """The generated values are not all accepted or all refused (a parity of nothing would pass too)."""
    lines = [{"prompt": "p", name: value} for name in CLI_FIELDS for value in field_values(name)]
    verdicts = [service_verdict(line) for line in lines]
    assert any(verdicts) and not all(verdicts)
    assert {field for verdict in verdicts for field in verdict} == set(CLI_FIELDS)


def test_a_lone_surrogate_is_refused_naming_the_prompt_not_a_crash(tmp_path: Path) -> None:
    """The disparity this test found: a JSON ``\\ud800`` escape passed the CLI and then failed to encode while
    the job body was sized (a traceback, not a message naming the line)."""
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "snow \\ud800"}\n', encoding="utf-8")
    with pytest.raises(inputs.InputError) as caught:
        inputs.load_items(str(path), [], {})
    reason = "must be valid Unicode text (no lone surrogates such as \\ud800)"
    assert caught.value.problems == [f"{path}:1: prompt: {reason}"]


def test_null_is_the_default_as_the_service_takes_it(tmp_path: Path) -> None:
    """The other disparity: the service takes ``null`` for its optional fields (as if left out); the CLI took it
    only for seed."""
    path = tmp_path / "prompts.jsonl"
    line = {"prompt": "p", "width": None, "height": None, "output_format": None, "output_quality": None}
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    [item] = inputs.load_items(str(path), [], {})
    assert item.request == line
    ImageRequest.model_validate(item.request)


FIELD_VALUES = {name: field_values(name) for name in CLI_FIELDS}
a_line = st.fixed_dictionaries(
    {"prompt": st.sampled_from(FIELD_VALUES["prompt"])},
    optional={name: st.sampled_from(values) for name, values in FIELD_VALUES.items() if name != "prompt"},
)


PROPERTY = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(lines=st.lists(a_line, min_size=1, max_size=12))
def test_any_combination_of_bounds(tmp_path: Path, lines: list[dict[str, Any]]) -> None:
    """Several fields at once, each at or around a bound: the cross-field rules and the field rules together."""
    assert_parity(tmp_path, lines)


# ------------------------------------------------------------------------------------------------ Idempotency-Key
def _published_header() -> dict[str, Any]:
    """The Idempotency-Key header's schema in docs/openapi.json (the same on every route that takes it)."""
    spec = json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))
    schemas = [
        parameter["schema"]
        for path in spec["paths"].values()
        for operation in path.values()
        if isinstance(operation, dict)
        for parameter in operation.get("parameters", [])
        if parameter.get("in") == "header" and parameter["name"].lower() == "idempotency-key"
    ]
    assert len(schemas) >= 2
    assert all(schema == schemas[0] for schema in schemas)
    [string] = [branch for branch in schemas[0]["anyOf"] if branch.get("type") == "string"]
    return string


def _published_ok(key: str) -> bool:
    header = _published_header()
    # The pattern is anchored; fullmatch, as a JSON Schema validator reads "$" (never before a final newline).
    return header["minLength"] <= len(key) <= header["maxLength"] and re.fullmatch(header["pattern"], key) is not None


def _service_ok(key: str) -> bool:
    try:
        service_idempotency.validate_key(key)
    except InvalidRequestError:
        return False
    return True


def _client_ok(key: str) -> bool:
    try:
        client_idempotency.check_key(key)
    except ValueError:
        return False
    return True


KEYS = [
    "a",
    "~",
    "!",
    "a b",
    "x" * 255,
    "x" * 256,
    "",
    " ",
    " a",
    "a ",
    "a\tb",
    "a\x7f",
    "a\x1f",
    "\u00e9t\u00e9",
    "a\nb",
    "a\n",
    "flux-images-" + "0" * 64,
]


@pytest.mark.parametrize("key", KEYS)
def test_one_idempotency_key_rule(key: str) -> None:
    """The client's rule (which the CLI uses, with room for -partNofM), the header rule the API publishes and the
    service's own check give every key the same answer."""
    assert _client_ok(key) == _published_ok(key) == _service_ok(key)


def test_the_published_pattern_is_the_services() -> None:
    assert _published_header()["pattern"] == service_idempotency.KEY_PATTERN


def test_the_keys_reach_both_verdicts() -> None:
    verdicts = {_client_ok(key) for key in KEYS}
    assert verdicts == {True, False}


@pytest.mark.parametrize("jobs", [1, 2, 12])
def test_the_cli_key_leaves_room_for_the_part_suffix(jobs: int) -> None:
    """``--idempotency-key`` is the client's rule with room for ``-partNofM``: every key it lets through is, suffix
    and all, one the service takes."""
    suffix = f"-part{jobs}of{jobs}" if jobs > 1 else ""
    longest = "k" * (service_idempotency.MAX_KEY_LENGTH - len(suffix))
    assert inputs.check_idempotency_key(longest, jobs) == longest
    assert _service_ok(longest + suffix) and _published_ok(longest + suffix)
    for refused in (longest + "k", " k", "k ", "\u00e9"):
        with pytest.raises(inputs.UsageError, match="--idempotency-key"):
            inputs.check_idempotency_key(refused, jobs)


# ------------------------------------------------------------------------------------------------ the documents
# The client's typed view of the API's documents: each dataclass of flux_images.models and the service model it reads.
DOCUMENTS = [
    ("Parameters", "GenerationParameters"),
    ("ImageFile", "ImageInfo"),
    ("Image", "ImageDocument"),
    ("Counts", "JobCounts"),
    ("ItemError", "ItemError"),
    ("JobItem", "JobItemDocument"),
    ("ResultsFile", "ResultsInfo"),
    ("JobState", "JobDocument"),
    ("Upload", "UploadDocument"),
]
# Fields of the service's documents the client leaves untyped (they are in each result's ``raw``), and the client's
# own names for a field. A new field of a document shows up here first: type it or list it.
UNTYPED = {
    "GenerationParameters": {"aspect_ratio", "megapixels", "output_format", "output_quality"},
    "ImageInfo": {"b64_json"},
}
RENAMED = {("Image", "file"): "image"}  # Image.file is the document's "image" object


@pytest.mark.parametrize(("client_name", "service_name"), DOCUMENTS)
def test_the_client_reads_the_fields_the_service_writes(client_name: str, service_name: str) -> None:
    client_fields = {
        RENAMED.get((client_name, field.name), field.name)
        for field in dataclasses.fields(getattr(client_models, client_name))
        if field.name != "raw"
    }
    service_fields = set(getattr(models, service_name).model_fields)
    assert client_fields <= service_fields, f"{client_name} reads fields {service_name} does not have"
    assert service_fields - client_fields == UNTYPED.get(service_name, set())


# ------------------------------------------------------------------------------------------------ job fields
def _nested(levels: int) -> dict[str, Any]:
    """An object nested ``levels`` levels deep (``{}`` is one level)."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def _sized(size: int) -> dict[str, Any]:
    """An object of exactly ``size`` bytes of compact JSON."""
    return {"s": "x" * (size - len('{"s":""}'))}


METADATA = [
    {},
    {"batch": "b1", "n": 3, "ok": True, "none": None, "list": [1, "two", 3.5]},
    _nested(models.MAX_METADATA_DEPTH),
    _nested(models.MAX_METADATA_DEPTH + 1),
    {"list": [[[]]]},
    _sized(models.MAX_METADATA_BYTES),
    _sized(models.MAX_METADATA_BYTES + 1),
    {"k": "\u00e9" * 339},  # 339 × 6 bytes escaped (\u00e9) + 8: 2,042
    {"k": "\u00e9" * 341},  # 2,054: over, though 690 bytes as UTF-8
    {"": 1},
    {"a": {"": 1}},
    {"n": int("9" * models.NUMBER_DIGITS)},
    {"n": int("9" * (models.NUMBER_DIGITS + 1))},
    {"n": 1e125},
    {"n": 1e126},
    {"n": 1e-130},
    {"n": 1e-131},
    {"n": 0},
    {"n": 0.0},
    {"n": -2.5e-7},
    {"n": math.inf},
    {"n": math.nan},
    {"s": "snow \ud800"},
    {"\udc80": 1},
]


def _service_takes(**fields: Any) -> bool:
    try:
        JobRequest.model_validate({"items": [{"prompt": "p"}], **fields})
    except ValidationError:
        return False
    return True


def _cli_takes(check: Any, value: Any) -> bool:
    try:
        check(value)
    except inputs.UsageError:
        return False
    return True


@pytest.mark.parametrize("metadata", METADATA, ids=lambda value: json.dumps(value)[:40])
def test_metadata_the_cli_takes_is_what_the_service_takes(metadata: dict[str, Any]) -> None:
    text = json.dumps(metadata)  # what --metadata is given (NaN and Infinity as Python's json writes them)
    assert _cli_takes(inputs.check_metadata, text) == _service_takes(metadata=json.loads(text))


def test_the_metadata_values_reach_both_verdicts() -> None:
    verdicts = {_service_takes(metadata=json.loads(json.dumps(value))) for value in METADATA}
    assert verdicts == {True, False}


WEBHOOK_URLS = [
    "https://hooks.example.com/flux",
    "https://hooks.example.com",
    "https://hooks.example.com:443/x?a=1#f",
    "https://hooks.example.com:0/",
    "https://hooks.example.com:65535/",
    "https://hooks.example.com:65536/",
    "https://hooks.example.com:99999/",
    "https://hooks.example.com:/x",
    "https://hooks.example.com:x/",
    "https://user:pw@hooks.example.com/",
    "https://hooks.example.com/a b",
    "https://hooks example.com/",
    "https://[::1]/x",
    "https://\u00e9xample.com/",
    "https://xn--xample-9ua.com/",
    "https:///x",
    "https://hooks.example.com/" + "a" * (2048 - len("https://hooks.example.com/")),
    "https://hooks.example.com/" + "a" * (2049 - len("https://hooks.example.com/")),
    "ftp://hooks.example.com/",
    "hooks.example.com/x",
]


@pytest.mark.parametrize("url", WEBHOOK_URLS, ids=lambda url: url[:50])
def test_a_webhook_url_the_cli_takes_is_what_the_service_takes(url: str) -> None:
    assert _cli_takes(inputs.check_webhook_url, url) == _service_takes(webhook_url=url)


@pytest.mark.parametrize("url", ["http://hooks.example.com/flux", "http://127.0.0.1:8080/hooks"])
def test_plain_http_the_cli_refuses_as_a_deployed_service_does(url: str) -> None:
    """The one difference, on purpose: the model takes http's shape and leaves it to the deployment, which refuses
    it unless configured for local use; the CLI cannot know the deployment and holds to the deployed rule."""
    assert _service_takes(webhook_url=url)
    assert not _cli_takes(inputs.check_webhook_url, url)


def test_the_job_field_limits_are_the_services() -> None:
    assert models.WEB_URL_PATTERN == inputs.WEB_URL_PATTERN
    assert models.MAX_METADATA_DEPTH == inputs.MAX_METADATA_DEPTH
    digits = (models.NUMBER_DIGITS, models.NUMBER_MIN_EXPONENT, models.NUMBER_MAX_EXPONENT)
    assert digits == (inputs.NUMBER_DIGITS, inputs.NUMBER_MIN_EXPONENT, inputs.NUMBER_MAX_EXPONENT)
    webhook = JobRequest.model_json_schema()["properties"]["webhook_url"]
    [string] = [branch for branch in webhook["anyOf"] if branch.get("type") == "string"]
    assert string["maxLength"] == inputs.MAX_WEBHOOK_URL
