"""Prompts from JSONL, CSV or the command line, checked locally against the rules of ``POST /v1/images``.

Every problem names where it is (``prompts.csv:12``) and the field, and all of them are reported at once. The
rules are the service's (README, "The API"): unknown fields are refused, types are strict, so a file that
passes here is not refused by the API for its items. The CLI is installed without the service's code, so the rules
are written here a second time; ``tests/unit/test_cli_parity.py`` holds them to the service's ``ImageRequest``
(every field at and around each of its bounds, and combinations of them): both accept and refuse the same values.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from flux_images import idempotency

from flux_images_cli.api import UsageError

FIELDS = (
    "prompt",
    "num_steps",
    "seed",
    "width",
    "height",
    "aspect_ratio",
    "megapixels",
    "output_format",
    "output_quality",
    "num_images",
)
INT_FIELDS = ("num_steps", "seed", "width", "height", "output_quality", "num_images")
# An explicit null in these is the service's default, as if the field were left out (num_steps and num_images
# have a default but no null).
NULLABLE = frozenset({"seed", "width", "height", "aspect_ratio", "megapixels", "output_format", "output_quality"})
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
MAX_NUM_IMAGES = 4
MAX_ITEMS_PER_JOB = 1000
MAX_PROMPT_CHARS = 2000
MAX_SEED = 4_294_967_295
MAX_METADATA_BYTES = 2048
MAX_IDEMPOTENCY_KEY = idempotency.MAX_KEY_LENGTH
MAX_REPORTED_PROBLEMS = 25
# A job's body stays well under API Gateway's 10 MB and Lambda's 6 MB request limits (non-ASCII prompts are big).
MAX_JOB_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Item:
    """One image request and where it came from (``file:line`` or ``--prompt #n``)."""

    request: dict[str, Any]
    source: str
    own: frozenset[str] = frozenset()  # the fields the line set itself (a default under them changes nothing)


class InputError(UsageError):
    """Every problem found in the input, each naming its place and field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_REPORTED_PROBLEMS]
        lines = [f"invalid input ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
        lines += [f"  {problem}" for problem in shown]
        if len(problems) > len(shown):
            lines.append(f"  … and {len(problems) - len(shown)} more")
        super().__init__("\n".join(lines))


# ------------------------------------------------------------------------------------------------ field rules
def field_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for field ``name`` of ``POST /v1/images``, or None when it is."""
    if name == "prompt":
        if not isinstance(value, str):
            return f"must be a string, not {_json_type(value)}"
        if not value.strip():
            return "must not be blank"
        if len(value) > MAX_PROMPT_CHARS:
            return f"is {len(value):,} characters long; at most {MAX_PROMPT_CHARS:,} are allowed"
        if not _is_unicode(value):
            return "must be valid Unicode text (no lone surrogates such as \\ud800)"
        return None
    if value is None and name in NULLABLE:
        return None  # explicit null: the service's default (for seed: the service picks one)
    if name in {"aspect_ratio", "output_format"}:
        allowed = ASPECT_RATIOS if name == "aspect_ratio" else OUTPUT_FORMATS
        if value not in allowed:
            return f"{json.dumps(value)[:40]} is not one of {', '.join(allowed)}"
        return None
    if name == "megapixels":
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"must be a number, not {_json_type(value)}"
        if not 0.0625 <= value <= 4:
            return f"{value} is out of range 0.0625–4"
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        return f"must be an integer, not {_json_type(value)} {json.dumps(value)[:40]}"
    if name == "num_steps" and not 1 <= value <= 8:
        return f"{value} is out of range 1–8"
    if name == "seed" and not 0 <= value <= MAX_SEED:
        return f"{value} is out of range 0–{MAX_SEED}"
    if name == "output_quality" and not 1 <= value <= 100:
        return f"{value} is out of range 1–100"
    if name == "num_images" and not 1 <= value <= MAX_NUM_IMAGES:
        return f"{value} is out of range 1–{MAX_NUM_IMAGES}"
    if name in {"width", "height"}:
        if not 256 <= value <= 2048:
            return f"{value} is out of range 256–2048"
        if value % 16:
            return f"{value} is not a multiple of 16"
    return None


def _is_unicode(text: str) -> bool:
    """JSON's ``\\ud800`` escapes (and undecodable bytes on a command line) give lone surrogates: no UTF-8 body can
    carry them, and the service refuses them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def combination_problems(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """The service's rules across fields, each field of a broken rule named (as the API's 422 does)."""
    problems: list[tuple[str, str]] = []
    sides = [name for name in ("width", "height") if fields.get(name) is not None]
    if fields.get("aspect_ratio") is not None and sides:
        reason = f"aspect_ratio and {' and '.join(sides)} are mutually exclusive: give one or the other"
        problems += [(name, reason) for name in ("aspect_ratio", *sides)]
    if fields.get("megapixels") is not None and fields.get("aspect_ratio") is None:
        problems.append(("megapixels", "needs aspect_ratio"))
    if fields.get("output_quality") is not None and fields.get("output_format") not in ("jpeg", "webp"):
        reason = "output_quality needs output_format jpeg or webp"
        problems += [("output_quality", reason), ("output_format", reason)]
    return problems


def _check_request(fields: dict[str, Any], source: str, problems: list[str]) -> bool:
    ok = True
    for name, value in fields.items():
        problem = field_problem(name, value)
        if problem:
            problems.append(f"{source}: {name}: {problem}")
            ok = False
    return ok


def _check_combined(request: dict[str, Any], source: str, problems: list[str]) -> bool:
    found = combination_problems(request)
    problems += [f"{source}: {name}: {reason}" for name, reason in found]
    return not found


SIZE_BY_SIDES, SIZE_BY_RATIO = ("width", "height"), ("aspect_ratio", "megapixels")


def with_defaults(defaults: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """A line's fields over the command line's defaults. The line's own way of sizing wins whole: a line with
    width/height drops a default aspect_ratio/megapixels, and the other way round."""
    merged = dict(defaults)
    for own, other in ((SIZE_BY_SIDES, SIZE_BY_RATIO), (SIZE_BY_RATIO, SIZE_BY_SIDES)):
        if any(name in fields for name in own):
            for name in other:
                merged.pop(name, None)
    return {**merged, **fields}


def images_of(request: dict[str, Any]) -> int:
    """The images (job items) a request makes: its ``num_images``, 1 by default."""
    return int(request.get("num_images", 1))


def without_default_num_images(item: Item) -> Item:
    """``num_images`` is sent as given (the service makes a request of N images N job items, seeds ``seed``,
    ``seed+1``, …); 1, the default, is left out, so an input of single images sends the bodies (and derives the
    Idempotency-Keys) it always did."""
    if item.request.get("num_images") != 1:
        return item
    return Item({k: v for k, v in item.request.items() if k != "num_images"}, item.source, item.own)


# ------------------------------------------------------------------------------------------------ formats
def _jsonl_items(text: str, label: str, defaults: dict[str, Any], problems: list[str]) -> list[Item]:
    items: list[Item] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        source = f"{label}:{number}"
        try:
            value = json.loads(stripped)
        except ValueError as exc:
            reason = getattr(exc, "msg", str(exc))
            column = getattr(exc, "colno", None)
            problems.append(f"{source}: not valid JSON: {reason}" + (f" (column {column})" if column else ""))
            continue
        if isinstance(value, str):
            value = {"prompt": value}
        if not isinstance(value, dict):
            problems.append(f"{source}: expected a JSON object or a string (the prompt), not {_json_type(value)}")
            continue
        unknown = [key for key in value if key not in FIELDS]
        for key in unknown:
            problems.append(f"{source}: {key}: unknown field (allowed: {', '.join(FIELDS)})")
        if "prompt" not in value:
            problems.append(f"{source}: prompt: missing (every line needs a prompt)")
        fields = {key: val for key, val in value.items() if key in FIELDS}
        if _check_request(fields, source, problems) and not unknown and "prompt" in value:
            items.append(Item(with_defaults(defaults, fields), source, frozenset(fields)))
    return items


_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)


def _csv_items(text: str, label: str, defaults: dict[str, Any], problems: list[str]) -> list[Item]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    items: list[Item] = []
    previous_end = 0
    for row in reader:
        start, previous_end = previous_end + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            source = f"{label}:{start}"
            unknown = [name for name in header if name not in FIELDS]
            duplicates = sorted({name for name in header if header.count(name) > 1})
            for name in unknown:
                problems.append(f"{source}: column {name!r}: unknown column (allowed: {', '.join(FIELDS)})")
            for name in duplicates:
                problems.append(f"{source}: column {name!r}: appears more than once")
            if "prompt" not in header:
                problems.append(f"{source}: the header has no 'prompt' column (the first line must name the columns)")
            if unknown or duplicates or "prompt" not in header:
                return []
            continue
        source = f"{label}:{start}"
        if len(row) > len(header):
            problems.append(f"{source}: {len(row)} cells but the header has {len(header)} columns")
            continue
        fields: dict[str, Any] = {}
        ok = True
        for name, cell in zip(header, row, strict=False):
            if name == "prompt":
                fields["prompt"] = cell
                continue
            cell = cell.strip()
            if not cell:
                continue  # empty cell: the default
            if name in {"aspect_ratio", "output_format"}:
                fields[name] = cell
                continue
            if name == "megapixels":
                try:
                    fields[name] = float(cell)
                except ValueError:
                    problems.append(f"{source}: {name}: {cell[:40]!r} is not a number")
                    ok = False
                continue
            if not _INTEGER.fullmatch(cell):
                problems.append(f"{source}: {name}: {cell[:40]!r} is not an integer")
                ok = False
                continue
            fields[name] = int(cell)
        if "prompt" not in fields:
            problems.append(f"{source}: prompt: missing")
            continue
        if _check_request(fields, source, problems) and ok:
            items.append(Item(with_defaults(defaults, fields), source, frozenset(fields)))
    if header is None:
        problems.append(f"{label}: empty CSV (the first line must be a header naming the columns, with 'prompt')")
    return items


def detect_format(path: str, text: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            value = json.loads(stripped)
        except ValueError:
            return "jsonl" if stripped.startswith("{") else "csv"
        return "jsonl" if isinstance(value, dict | str) else "csv"
    return "jsonl"


def read_source(path: str) -> tuple[str, str]:
    """``(label, text)`` of a prompts file, or of standard input for ``-``."""
    if path == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
        label = "<stdin>"
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
        label = path
    try:
        return label, data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(f"{label}:{line}: not UTF-8 text") from None


def load_items(
    path: str | None,
    prompts: Iterable[str],
    defaults: dict[str, Any],
    *,
    fmt: str = "auto",
) -> list[Item]:
    """The items of a prompts file and of ``--prompt`` arguments, with ``defaults`` under each; or InputError."""
    problems: list[str] = []
    items: list[Item] = []
    if path is not None:
        label, text = read_source(path)
        kind = detect_format(path, text) if fmt == "auto" else fmt
        reader = _jsonl_items if kind == "jsonl" else _csv_items
        items += reader(text, label, defaults, problems)
    for number, prompt in enumerate(prompts, start=1):
        source = f"--prompt #{number}"
        if _check_request({"prompt": prompt}, source, problems):
            items.append(Item({**defaults, "prompt": prompt}, source, frozenset({"prompt"})))
    items = [item for item in items if _check_combined(item.request, item.source, problems)]
    items = [without_default_num_images(item) for item in items]
    if problems:
        raise InputError(problems)
    if not items:
        raise UsageError("no prompts: give a prompts file (JSONL or CSV, '-' for standard input) or --prompt TEXT")
    return items


# ------------------------------------------------------------------------------------------------ job bodies
def overridden_defaults(items: list[Item], defaults: dict[str, Any]) -> list[str]:
    """The defaults that no item takes: every item sets that field itself."""
    return [name for name in defaults if items and all(name in item.own for item in items)]


def check_metadata(text: str | None) -> dict[str, Any] | None:
    """``--metadata`` as the service takes it: a JSON object of at most 2,048 bytes, nested at most 16 levels, keys
    not empty, numbers DynamoDB can store, text valid Unicode."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--metadata: not valid JSON: {getattr(exc, 'msg', exc)}") from None
    if not isinstance(value, dict):
        raise UsageError(f"--metadata: must be a JSON object, not {_json_type(value)}")
    problem = _metadata_problem(value, 1)
    if problem:
        raise UsageError(f"--metadata: {problem}")
    size = len(json.dumps(value, separators=(",", ":")).encode("utf-8"))  # measured as the service measures it
    if size > MAX_METADATA_BYTES:
        raise UsageError(f"--metadata: {size:,} bytes of JSON; at most {MAX_METADATA_BYTES:,} are allowed")
    return value


MAX_METADATA_DEPTH = 16  # nesting levels
# What a DynamoDB number holds: 38 significant digits, a magnitude from 1e-130 to below 1e126.
NUMBER_DIGITS, NUMBER_MIN_EXPONENT, NUMBER_MAX_EXPONENT = 38, -130, 125


def _metadata_problem(value: Any, depth: int) -> str | None:
    """Why the service would refuse ``value`` (at nesting level ``depth``) inside metadata, or None."""
    if isinstance(value, dict | list):
        if depth > MAX_METADATA_DEPTH:
            return f"must nest at most {MAX_METADATA_DEPTH} levels"
        if isinstance(value, dict) and "" in value:
            return "keys must not be empty"
        inner = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        return next((found for part in inner if (found := _metadata_problem(part, depth + 1))), None)
    if isinstance(value, str):
        return None if _is_unicode(value) else "strings must be valid Unicode (no lone surrogates)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite() or (
        number
        and (
            len(number.as_tuple().digits) > NUMBER_DIGITS
            or not NUMBER_MIN_EXPONENT <= number.adjusted() <= NUMBER_MAX_EXPONENT
        )
    ):
        return (
            f"numbers must be finite, of at most {NUMBER_DIGITS} significant digits and a magnitude from "
            f"1e{NUMBER_MIN_EXPONENT} to 1e{NUMBER_MAX_EXPONENT}"
        )
    return None


# The shape of a webhook URL the service takes (a scheme, an ASCII host name without credentials, a port of 0-65535,
# then anything without spaces): the service's own pattern, which it also publishes in its schema.
PORT_PATTERN = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
WEB_URL_PATTERN = rf"^https?://[A-Za-z0-9._~%!$&'()*+,;=-]+(:{PORT_PATTERN}?)?([/?#]\S*)?$"
MAX_WEBHOOK_URL = 2048


def check_webhook_url(url: str | None) -> str | None:
    """``--webhook-url`` as a deployed service takes it: https (plain http only where a deployment allows it, as the
    local stack does: the CLI holds to the deployed rule), a host, no credentials, a port of 0-65535, no spaces."""
    if url is None:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"--webhook-url: {url!r} must be an https URL")
    if parts.username or parts.password:
        raise UsageError("--webhook-url: must not carry credentials")
    if len(url) > MAX_WEBHOOK_URL:
        raise UsageError(f"--webhook-url: at most {MAX_WEBHOOK_URL:,} characters")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise UsageError("--webhook-url: the port must be a number from 0 to 65535") from None
    if not re.fullmatch(WEB_URL_PATTERN, url):
        raise UsageError(
            f"--webhook-url: {url[:80]!r} must be an https URL: an ASCII host name, an optional port, then no spaces"
        )
    return url


def check_idempotency_key(key: str | None, jobs: int) -> str | None:
    if key is None:
        return None
    room = MAX_IDEMPOTENCY_KEY - (len(_part_suffix(jobs, jobs)) if jobs > 1 else 0)
    try:
        return idempotency.check_key(key, room)  # the client's rule, with room left for -partNofM
    except ValueError:
        raise UsageError(
            f"--idempotency-key: must be 1–{room} printable ASCII characters, without a space at either end"
        ) from None


def _part_suffix(number: int, total: int) -> str:
    return f"-part{number}of{total}"


@dataclass(frozen=True)
class JobPlan:
    """One ``POST /v1/jobs``: its body, its Idempotency-Key and the sources of its items (for error messages)."""

    body: dict[str, Any]
    idempotency_key: str
    sources: list[str]
    first: int  # 1-based position of its first item in the whole input

    @property
    def size(self) -> int:
        return len(self.sources)

    @property
    def images(self) -> int:
        """The job's items as the service counts them: one per image."""
        return sum(images_of(request) for request in self.body["items"])


def derived_key(body: dict[str, Any]) -> str:
    """The automatic Idempotency-Key of a job: the hash of its exact body (``flux_images.idempotency``, the rule
    shared with the client), so the same input gives the same key on a re-run and a changed input (or option)
    gives a new one instead of a ``422 idempotency_key_reused``."""
    return idempotency.content_key(body)


def plan_jobs(
    items: list[Item],
    *,
    webhook_url: str | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    per_job: int = MAX_ITEMS_PER_JOB,
    max_body_bytes: int = MAX_JOB_BODY_BYTES,
) -> list[JobPlan]:
    """The jobs for ``items``: in order, at most ``per_job`` items and about ``max_body_bytes`` of JSON each."""
    chunks: list[list[Item]] = []
    current: list[Item] = []
    size = 0
    for item in items:
        item_bytes = len(json.dumps(item.request, ensure_ascii=False).encode("utf-8")) + 1
        if current and (len(current) >= per_job or size + item_bytes > max_body_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += item_bytes
    if current:
        chunks.append(current)
    key = check_idempotency_key(idempotency_key, len(chunks))
    plans: list[JobPlan] = []
    first = 1
    for number, chunk in enumerate(chunks, start=1):
        body: dict[str, Any] = {"items": [item.request for item in chunk]}
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        if metadata is not None:
            body["metadata"] = metadata
        if key is None:
            job_key = derived_key(body)
        else:
            job_key = key if len(chunks) == 1 else key + _part_suffix(number, len(chunks))
        plans.append(JobPlan(body, job_key, [item.source for item in chunk], first))
        first += len(chunk)
    return plans


# ------------------------------------------------------------------------------------------------ uploads
MAX_LINES_PER_UPLOAD = 100_000


def jsonl_line(request: dict[str, Any]) -> bytes:
    """One line of an uploaded items file: the request as canonical JSON (the form ``derived_key`` hashes), ``\\n``."""
    return idempotency.canonical(request) + b"\n"


@dataclass(frozen=True)
class UploadPlan:
    """One job from an uploaded JSONL file: its items, the other fields of its body, its Idempotency-Key."""

    items: list[Item]
    extras: dict[str, Any]  # webhook_url / metadata, when given
    idempotency_key: str
    first: int  # 1-based position of its first item in the whole input
    file_bytes: int  # the size of the JSONL file (``jsonl_line`` of every item)
    content_key: str  # the derived key of the content, also when --idempotency-key names the job

    @property
    def size(self) -> int:
        return len(self.items)

    @property
    def images(self) -> int:
        """The job's items as the service counts them: one per image."""
        return sum(images_of(item.request) for item in self.items)

    @property
    def sources(self) -> list[str]:
        return [item.source for item in self.items]

    def body(self, upload_id: str) -> dict[str, Any]:
        return {"items_upload_id": upload_id, **self.extras}


def _streamed_key(items: list[Item], extras: dict[str, Any]) -> tuple[str, int]:
    """``(derived_key of {"items": [...], **extras}, bytes of the JSONL file)`` in one pass, without building the
    body or the file: the key is the one ``derived_key`` gives the same content as an inline body."""
    size = 0

    def lines() -> Iterator[bytes]:
        nonlocal size
        for item in items:
            line = idempotency.canonical(item.request)
            size += len(line) + 1
            yield line

    key = idempotency.streamed_content_key(lines(), extras)
    return key, size


def plan_uploads(
    items: list[Item],
    *,
    webhook_url: str | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    per_upload: int = MAX_LINES_PER_UPLOAD,
) -> list[UploadPlan]:
    """The upload jobs for ``items``: in order, at most ``per_upload`` items (images: a line of ``num_images`` N
    counts N) each."""
    extras: dict[str, Any] = {}
    if webhook_url is not None:
        extras["webhook_url"] = webhook_url
    if metadata is not None:
        extras["metadata"] = metadata
    chunks: list[list[Item]] = []
    images = 0
    for item in items:
        count = images_of(item.request)
        if not chunks or images + count > per_upload:
            chunks.append([])
            images = 0
        chunks[-1].append(item)
        images += count
    key = check_idempotency_key(idempotency_key, len(chunks))
    plans: list[UploadPlan] = []
    first = 1
    for number, chunk in enumerate(chunks, start=1):
        derived, size = _streamed_key(chunk, extras)
        job_key = derived if key is None else key if len(chunks) == 1 else key + _part_suffix(number, len(chunks))
        plans.append(UploadPlan(chunk, extras, job_key, first, size, derived))
        first += len(chunk)
    return plans
