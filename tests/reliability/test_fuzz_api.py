"""Bad input: schemathesis fuzzes every operation of the local stack's own ``/openapi.json``, with the API key.

Per operation it sends schemathesis' coverage cases (each boundary and type violation of each parameter and body
field, the missing and the undeclared ones, the wrong media types and the undeclared methods; positive and
negative, deterministic), then hypothesis-generated positive and negative cases with a fixed seed. Every answer
must be no 5xx, a documented status with the documented content type, headers and body; negative data must be
refused, and positive data accepted, except for the refusals the spec can only document in words (see
``accepts_valid_data``). Targeted cases beyond the generators then check bodies it does not produce: broken or
non-UTF-8 JSON, deep nesting, other media types, a 9 MB body, unicode, numbers storage cannot hold.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support.secrets_under_test import API_KEY

MIN_CASES = 1000  # per run, across the operations
EXAMPLES = {GenerationMode.POSITIVE: 70, GenerationMode.NEGATIVE: 110}  # generated per operation, after coverage
HEADERS = {"x-api-key": API_KEY}
# The methods API Gateway routes (others, e.g. TRACE, get its 404 too: test_schemathesis_cli runs every one).
UNEXPECTED_METHODS = ["get", "put", "post", "delete", "options", "patch"]
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _excused_refusal(case: Case, response: Any) -> str | None:
    """Why a 422 to spec-valid data is documented behaviour, or None when it is not."""
    if response.status_code != 422:
        return None
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if error.get("code") == "idempotency_key_reused":  # the same key with another body (documented 422)
        return "idempotency_key_reused"
    reasons = [_documented_in_words(case.body, detail) for detail in error.get("details") or []]
    if not reasons or None in reasons:
        return None
    return " + ".join(sorted({reason for reason in reasons if reason}))


def _documented_in_words(body: Any, detail: dict[str, Any]) -> str | None:
    location = detail["location"]
    # The rules across fields (aspect_ratio or width/height, megapixels with aspect_ratio, output_quality with a
    # lossy output_format, b64_json only answered synchronously, the inline size limit): in the
    # fields' descriptions; JSON Schema could state some, but not for every null a generator sends.
    if detail.get("type") == "conflicting_fields":
        return "options that do not go together"
    if _integral_float(body, location):  # ImageRequest takes numbers as written; to JSON Schema 4.0 is an integer
        return "integer written as a float"
    if location == "body.metadata":  # nesting, empty keys, unstorable numbers: in the description, at any depth
        return "metadata limits"
    if location == "body.items_upload_id":  # any upl_ id fits the pattern; only a file uploaded for it is accepted
        return "an upload id with no uploaded file"
    return None


def _integral_float(body: Any, location: str) -> bool:
    """The value a detail's location (``body.items.0.width``) points at is a float with an integral value."""
    value = body
    for part in location.split(".")[1:]:
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return False
    return isinstance(value, float) and value.is_integer()


EXCUSED: collections.Counter[str] = collections.Counter()  # refusals of spec-valid data, per operation and reason


def accepts_valid_data(ctx: CheckContext, response: Any, case: Case) -> bool | None:
    """positive_data_acceptance, less the refusals of spec-valid data that the spec documents in words."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except AssertionError:
        reason = _excused_refusal(case, response)
        if reason is None:
            raise
        EXCUSED[f"{case.operation.label}: {reason}"] += 1
        return None


CHECKS = [*CONFORMANCE, negative_data_rejection, accepts_valid_data]


@dataclass
class Tally:
    cases: int = 0
    server_errors: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    server_error_ids: list[str] = field(default_factory=list)  # x-amzn-RequestId of each 5xx


def _exercise(case: Case, session: requests.Session, tally: Tally) -> None:
    tally.cases += 1
    response = case.call(session=session, headers=HEADERS, timeout=60)
    tally.statuses[response.status_code] += 1
    if response.status_code >= 500:
        tally.server_errors += 1
        tally.server_error_ids.append(response.headers.get("x-amzn-RequestId", ""))
    try:
        case.validate_response(response, checks=CHECKS, headers=HEADERS)
    except FailureGroup as group:
        mode = case.meta.generation.mode.value if case.meta else "?"
        titles = "; ".join(sorted({failure.title for failure in group.exceptions}))
        tally.failures.append(f"{case.operation.label} [{mode}] {titles}\n{group}")


def _generate(operation: Any, mode: GenerationMode, examples: int, session: requests.Session, tally: Tally) -> None:
    @settings(
        max_examples=examples,
        derandomize=True,  # the same cases on every run, and no example database
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # failures are collected, not raised: nothing to shrink
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def generated(case: Case) -> None:
        _exercise(case, session, tally)

    generated()


@pytest.fixture(scope="module")
def schema(stack):
    config = schemathesis.Config.from_dict({"phases": {"coverage": {"unexpected-methods": UNEXPECTED_METHODS}}})
    return schemathesis.openapi.from_url(f"{stack.url}/openapi.json", config=config)


# Over a thousand cases against the whole local stack, POST /v1/images among them with up to four images per case
# (num_images) and 2048x2048 conversions: beyond the suite's 120 s default on a shared 2-core machine.
@pytest.mark.timeout(600)
def test_fuzzing_every_operation_finds_no_5xx_and_no_answer_outside_the_spec(stack, emulator, schema, reliability):
    # Given the spec the running stack serves (without a key), and every operation in it
    operations = [result.ok() for result in schema.get_all_operations()]
    assert sorted(operation.label for operation in operations) == [
        "DELETE /v1/jobs/{job_id}",
        "GET /v1/images/{image_id}",
        "GET /v1/jobs/{job_id}",
        "POST /v1/images",
        "POST /v1/jobs",
        "POST /v1/uploads",
    ]
    session = requests.Session()
    tallies: dict[str, Tally] = {}
    EXCUSED.clear()

    # When each operation gets its coverage cases, then generated positive and negative ones, with the API key
    for operation in operations:
        tally = tallies[operation.label] = Tally()
        coverage = schema.iter_coverage_cases(
            operation,
            generation_modes=list(GenerationMode),
            generation_config=schema.config.generation_for(operation=operation, phase="coverage"),
        )
        for case in coverage:
            _exercise(case, session, tally)
        for mode, examples in EXAMPLES.items():
            _generate(operation, mode, examples, session, tally)

    # Then no answer was a 5xx or outside the spec, over at least MIN_CASES cases
    for label, tally in tallies.items():
        reliability.record(
            "Bad input",
            f"schemathesis: {label}",
            f"{tally.cases} cases, {tally.server_errors} 5xx, {len(tally.failures)} spec violations",
            cases=tally.cases,
            server_errors=tally.server_errors,
            violations=len(tally.failures),
            statuses=dict(sorted(tally.statuses.items())),
            excused_refusals={key.split(": ", 1)[1]: n for key, n in EXCUSED.items() if key.startswith(f"{label}: ")},
        )
    total = sum(tally.cases for tally in tallies.values())
    server_errors = sum(tally.server_errors for tally in tallies.values())
    failures = [failure for tally in tallies.values() for failure in tally.failures]
    reliability.record(
        "Bad input",
        "schemathesis: every operation",
        f"{total} cases, {server_errors} 5xx, {len(failures)} spec violations",
        cases=total,
        server_errors=server_errors,
        violations=len(failures),
        headline=True,
    )
    per_operation = {label: tally.cases for label, tally in tallies.items()}
    assert total >= MIN_CASES, f"only {total} cases were sent: {per_operation}"
    ids = {request_id for tally in tallies.values() for request_id in tally.server_error_ids}
    causes = [
        f"request {request_id}: {cause}" for request_id, cause in list(stack.gateway.failures) if request_id in ids
    ]
    why = "\n\nWhat the local gateway logged for them:\n" + "\n".join(causes) if causes else ""
    first = "\n\n".join(failures[:5])
    assert not failures, f"{len(failures)} of {total} cases failed; the first ones:\n\n{first}{why}"


# ------------------------------------------------------------------------------------------ targeted bad input
@dataclass(frozen=True)
class Probe:
    name: str
    operation: str  # the spec's label
    method: str
    path: str
    status: int
    code: str | None  # the error code expected, None for a success
    body: bytes | None = None
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


IMAGE = ("POST /v1/images", "POST", "/v1/images")
JOB = ("POST /v1/jobs", "POST", "/v1/jobs")
UNKNOWN_JOB = f"/v1/jobs/job_{'0' * 32}"
PROBES = [
    Probe("truncated JSON", *IMAGE, 400, "malformed_json", b'{"prompt": "x"'),
    Probe("JSON nested 100,000 deep", *IMAGE, 400, "malformed_json", b"[" * 100_000 + b"]" * 100_000),
    Probe("body not UTF-8", *IMAGE, 400, "malformed_json", b'\xff\xfe{"prompt": "x"}', content_type=None),
    Probe("NaN for a number", *IMAGE, 422, "validation_error", b'{"prompt": "x", "seed": NaN}'),
    Probe("lone surrogate in the prompt", *IMAGE, 422, "validation_error", b'{"prompt": "\\ud800"}'),
    Probe("empty body", *IMAGE, 422, "validation_error", b""),
    Probe("JSON array for the object", *IMAGE, 422, "validation_error", b"[]"),
    Probe("duplicate key, last one wrong", *IMAGE, 422, "validation_error", b'{"prompt": "x", "prompt": 5}'),
    Probe(
        "integer of 5,000 digits (over Python's int parsing limit)",
        *IMAGE,
        400,
        "malformed_json",
        b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}",
    ),
    Probe("integer of 4,000 digits", *IMAGE, 422, "validation_error", b'{"prompt": "x", "seed": ' + b"9" * 4000 + b"}"),
    # Under API Gateway's 10 MB limit, the model refuses it (deployed, Lambda's 6 MB request limit comes first)
    Probe("9 MB prompt", *IMAGE, 422, "validation_error", _json({"prompt": "x" * 9_000_000})),
    Probe("text/plain body", *IMAGE, 415, "unsupported_media_type", _json({"prompt": "x"}), "text/plain"),
    Probe("form body", *IMAGE, 415, "unsupported_media_type", b"prompt=x", "application/x-www-form-urlencoded"),
    Probe("multipart without boundary", *IMAGE, 415, "unsupported_media_type", b"--x--", "multipart/form-data"),
    Probe("XML body", *IMAGE, 415, "unsupported_media_type", b"<prompt>x</prompt>", "application/xml"),
    Probe(
        "media type in capitals",
        *IMAGE,
        201,
        None,
        _json({"prompt": "caps", "width": 256, "height": 256}),
        "APPLICATION/JSON; charset=UTF-8",
    ),
    Probe(
        "unicode prompt: emoji, RTL, combining, NUL",
        *IMAGE,
        201,
        None,
        _json({"prompt": "🦊 שלום é\u0301 \u0000 \u202e", "width": 256, "height": 256}),
    ),
    Probe(
        "non-ASCII Idempotency-Key",
        *IMAGE,
        422,
        "validation_error",
        _json({"prompt": "x"}),
        headers={"Idempotency-Key": "clé"},
    ),
    Probe(
        "256-character Idempotency-Key",
        *IMAGE,
        422,
        "validation_error",
        _json({"prompt": "x"}),
        headers={"Idempotency-Key": "k" * 256},
    ),
    Probe("1,001 items", *JOB, 422, "validation_error", _json({"items": [{"prompt": "x"}] * 1001})),
    Probe(
        "aspect_ratio with width and height",
        *IMAGE,
        422,
        "validation_error",
        _json({"prompt": "x", "aspect_ratio": "16:9", "width": 512, "height": 512}),
    ),
    Probe(
        "megapixels NaN", *IMAGE, 422, "validation_error", b'{"prompt": "x", "aspect_ratio": "1:1", "megapixels": NaN}'
    ),
    Probe(
        "megapixels Infinity",
        *IMAGE,
        422,
        "validation_error",
        b'{"prompt": "x", "aspect_ratio": "1:1", "megapixels": Infinity}',
    ),
    Probe(
        "output_quality without a format", *IMAGE, 422, "validation_error", _json({"prompt": "x", "output_quality": 50})
    ),
    Probe(
        "inline PNGs past Lambda's 6 MB answer",
        *IMAGE,
        422,
        "validation_error",
        _json({"prompt": "x", "num_images": 4, "width": 2048, "height": 2048, "response_format": "b64_json"}),
    ),
    Probe(
        "several images queued (a job of one item per image)",
        *IMAGE,
        202,
        None,
        _json({"prompt": "x", "num_images": 2, "width": 256, "height": 256}),
        headers={"Prefer": "respond-async"},
    ),
    Probe(
        "inline bytes queued",
        *IMAGE,
        422,
        "validation_error",
        _json({"prompt": "x", "response_format": "b64_json"}),
        headers={"Prefer": "respond-async"},
    ),
    Probe(
        "five images in a job item",
        *JOB,
        422,
        "validation_error",
        _json({"items": [{"prompt": "x", "num_images": 5}]}),
    ),
    Probe(
        "four small WebP images inline",
        *IMAGE,
        201,
        None,
        _json(
            {
                "prompt": "x",
                "num_images": 4,
                "aspect_ratio": "9:21",
                "megapixels": 0.0625,
                "output_format": "webp",
                "output_quality": 1,
                "response_format": "b64_json",
            }
        ),
    ),
    Probe(
        "several images in a job item (one item per image)",
        *JOB,
        202,
        None,
        _json({"items": [{"prompt": "x", "num_images": 3, "width": 256, "height": 256}]}),
    ),
    Probe(
        "metadata number beyond storage",
        *JOB,
        422,
        "validation_error",
        _json({"items": [{"prompt": "x"}], "metadata": {"n": 1e300}}),
    ),
    Probe(
        "metadata integer of 39 digits",
        *JOB,
        422,
        "validation_error",
        _json({"items": [{"prompt": "x"}], "metadata": {"n": 10**38}}),
    ),
    Probe(
        "metadata nested 20 deep",
        *JOB,
        422,
        "validation_error",
        _json({"items": [{"prompt": "x"}], "metadata": {"n": _nested(20)}}),
    ),
    Probe(
        "metadata with an empty key",
        *JOB,
        422,
        "validation_error",
        _json({"items": [{"prompt": "x"}], "metadata": {"a": [{"": 1}]}}),
    ),
    Probe(
        "metadata with a lone surrogate",
        *JOB,
        422,
        "validation_error",
        b'{"items": [{"prompt": "x"}], "metadata": {"\\ud800": "\\udc00"}}',
    ),
    Probe(
        "metadata over 2 KB",
        *JOB,
        422,
        "validation_error",
        _json({"items": [{"prompt": "x"}], "metadata": {"n": "x" * 3000}}),
    ),
    Probe(
        "webhook with credentials",
        *JOB,
        422,
        "validation_error",
        _json({"items": [{"prompt": "x"}], "webhook_url": "https://u:p@example.com/"}),
    ),
    Probe(
        "webhook not http",
        *JOB,
        422,
        "validation_error",
        _json({"items": [{"prompt": "x"}], "webhook_url": "file:///etc/passwd"}),
    ),
    Probe(
        "limit not a number",
        "GET /v1/jobs/{job_id}",
        "GET",
        UNKNOWN_JOB,
        422,
        "validation_error",
        params={"limit": "ten"},
    ),
    Probe("limit 0", "GET /v1/jobs/{job_id}", "GET", UNKNOWN_JOB, 422, "validation_error", params={"limit": "0"}),
    Probe("job id with NUL", "GET /v1/jobs/{job_id}", "GET", "/v1/jobs/job_%00", 422, "validation_error"),
    Probe(
        "job id of 4,000 characters",
        "DELETE /v1/jobs/{job_id}",
        "DELETE",
        "/v1/jobs/" + "j" * 4000,
        422,
        "validation_error",
    ),
    Probe("unknown job", "DELETE /v1/jobs/{job_id}", "DELETE", UNKNOWN_JOB, 404, "not_found"),
    Probe(
        "image id with unicode", "GET /v1/images/{image_id}", "GET", "/v1/images/img_%C3%A9", 422, "validation_error"
    ),
    Probe("no API key", *IMAGE, 403, "invalid_api_key", _json({"prompt": "x"}), headers={"x-api-key": ""}),
]


@pytest.mark.parametrize("probe", PROBES, ids=[probe.name for probe in PROBES])
def test_targeted_bad_input_gets_its_documented_refusal(stack, emulator, schema, reliability, probe: Probe):
    # Given one kind of bad input the generators do not send
    method, path = probe.operation.split(" ", 1)
    operation = schema[path][method]
    headers = {**HEADERS, **probe.headers}
    if probe.content_type is not None:
        headers["Content-Type"] = probe.content_type
    # When it is sent
    response = requests.request(
        probe.method, f"{stack.url}{probe.path}", data=probe.body, headers=headers, params=probe.params, timeout=60
    )
    # Then the answer is the documented one, in the documented shape
    code = response.json().get("error", {}).get("code") if response.status_code >= 400 else None
    reliability.record(
        "Bad input", probe.name, f"{response.status_code} {code or ''}".strip(), status=response.status_code
    )
    assert (response.status_code, code) == (probe.status, probe.code), response.text[:500]
    operation.Case().validate_response(response, checks=CONFORMANCE)


def test_float_metadata_is_stored_and_echoed(api, emulator, reliability):
    # Given metadata with fractions, exponents and big integers (the jobs table stores no floats as such)
    metadata = {"score": 0.5, "tiny": 1.5e-7, "big": 12345678901234567890123456789, "list": [1, 2.25, {"x": -0.125}]}
    # When a job carries it
    created = api(
        "POST", "/v1/jobs", json={"items": [{"prompt": "x", "width": 256, "height": 256}], "metadata": metadata}
    )
    # Then it is accepted and echoed as sent, on submission and when read back
    assert created.status_code == 202, created.text
    assert created.json()["metadata"] == metadata
    assert api("GET", f"/v1/jobs/{created.json()['id']}").json()["metadata"] == metadata
    reliability.record("Bad input", "metadata with fractions and big integers", "202, echoed as sent")


MARKERS = ["", "[[unsafe]]", "[[unsafe:hate]]", "[[unsafe-image]]", "[[unsafe-image:VIOLENCE]]"]


def test_fuzzed_prompts_under_moderation_get_a_documented_answer(stack, emulator, schema, moderation, reliability):
    # Given content moderation of prompts and images (the stand-in flags the markers)
    moderation("both")
    operation = schema["/v1/images"]["POST"]
    answers: collections.Counter[str] = collections.Counter()

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        text=st.text(max_size=80),
        marker=st.sampled_from(MARKERS),
        at_end=st.booleans(),
        size=st.sampled_from([256, 512]),
    )
    def one(text: str, marker: str, at_end: bool, size: int) -> None:
        prompt = f"{text} {marker}" if at_end else f"{marker} {text}"
        # When any prompt, with or without a marker anywhere in it, is asked for
        response = requests.post(
            f"{stack.url}/v1/images",
            json={"prompt": prompt, "width": size, "height": size},
            headers=HEADERS,
            timeout=60,
        )
        # Then the answer is a documented one: created, refused as invalid, or blocked naming the right side
        code = response.json().get("error", {}).get("code") if response.status_code >= 400 else "created"
        answers[code] += 1
        assert response.status_code in (201, 422), response.text[:500]
        if code == "content_blocked":
            detail = response.json()["error"]["details"][0]
            expected = "output.image" if marker.startswith("[[unsafe-image") else "body.prompt"
            assert marker and detail["location"] == expected and detail["categories"], response.text[:500]
        else:
            assert not marker or code == "validation_error", f"{marker!r} was not blocked: {response.text[:300]}"
        operation.Case().validate_response(response, checks=CONFORMANCE)

    one()
    assert answers["content_blocked"] > 0 and answers["created"] > 0, answers
    reliability.record(
        "Bad input",
        "fuzzed prompts under moderation (markers anywhere)",
        ", ".join(f"{count} {code}" for code, count in sorted(answers.items())),
    )
