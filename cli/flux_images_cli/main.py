"""``flux-images``: submit prompts in bulk to the Flux image service, follow the jobs, download the images.

Exit codes: 0 every item succeeded; 1 some items failed or were canceled (or are not finished); 2 usage or input
errors; 3 API or network errors (including images that could not be downloaded or verified); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from flux_images.models import parse_time
from tqdm import tqdm

from flux_images_cli import jobs, progress
from flux_images_cli.api import (
    DEFAULT_TIMEOUT,
    ApiClient,
    ApiError,
    CliError,
    NetworkError,
    UsageError,
    check_api_url,
    describe_exception,
    is_loopback,
)
from flux_images_cli.download import Downloader, DownloadReport
from flux_images_cli.inputs import (
    ASPECT_RATIOS,
    FIELDS,
    MAX_ITEMS_PER_JOB,
    MAX_JOB_BODY_BYTES,
    MAX_LINES_PER_UPLOAD,
    OUTPUT_FORMATS,
    JobPlan,
    UploadPlan,
    check_metadata,
    check_webhook_url,
    field_problem,
    load_items,
    overridden_defaults,
    plan_jobs,
    plan_uploads,
)
from flux_images_cli.jobs import MAX_POLL_INTERVAL
from flux_images_cli.uploads import Uploader, UploadLedger, UploadsUnsupported

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE, EXIT_API, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
ENV_URL, ENV_KEY = "FLUX_IMAGES_API_URL", "FLUX_IMAGES_API_KEY"
DEFAULT_POLL_INTERVAL = 2.0
SHOWN_DOWNLOAD_FAILURES = 5
# A job created this long before the POST that answered with it was made by an earlier run (clock skew allowed).
FOUND_AGAIN_AGE_S = 120.0

DESCRIPTION = """\
Generate images in bulk with the Flux image service: submit a file of prompts as jobs (POST /v1/jobs), follow
them with a progress bar, and download every image, checked against its sha256, with a manifest.

The API URL and key come from --api-url / --api-key or the environment variables FLUX_IMAGES_API_URL and
FLUX_IMAGES_API_KEY (prefer the variable for the key: command lines are visible to other local users)."""

EXAMPLES = """\
examples:
  export FLUX_IMAGES_API_URL=http://127.0.0.1:3000 FLUX_IMAGES_API_KEY=local-dev-key   # make run
  flux-images submit prompts.jsonl --width 512 --height 512      # submit, wait, download into ./flux-images-<job>
  flux-images submit prompts.csv --no-wait                        # print the job id and return
  flux-images submit --prompt 'a red fox' --prompt 'a blue whale' --seed 7 --out ./animals
  flux-images wait job_5f0e...                                    # progress bar until the job is finished
  flux-images download job_5f0e... --out ./images                 # resumable; writes manifest.jsonl/.csv
  flux-images status job_5f0e...
  flux-images cancel job_5f0e...

exit codes: 0 all items succeeded, 1 some failed or were canceled, 2 usage/input error, 3 API/network error,
130 interrupted (Ctrl-C). See docs/cli.md."""


class Console:
    """stdout carries results (job ids, status); everything for people goes to stderr, above the progress line or
    bar being drawn (``progress.write_message`` / ``tqdm.write``), so a message never lands in the middle of it."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def out(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def _err(self, text: str) -> None:
        if progress.drawing(sys.stderr):
            progress.write_message(text, sys.stderr)  # above the job's progress line
        else:
            tqdm.write(text, file=sys.stderr)  # above a download or upload bar, if one is drawn
        sys.stderr.flush()

    def info(self, text: str) -> None:
        if not self.quiet:
            self._err(text)

    def warn(self, text: str) -> None:
        self._err(f"flux-images: warning: {text}")

    def error(self, text: str) -> None:
        self._err(f"flux-images: error: {text}")

    def report(self, text: str, *, failed: bool) -> None:
        """Summaries: shown unless --quiet, and always when something failed."""
        if failed or not self.quiet:
            self._err(text)


# ---------------------------------------------------------------------------------------------------- parser
def _field_type(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?\d+", text.strip(), re.ASCII):
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
        value = int(text)
        problem = field_problem(name, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = name
    return parse


def _megapixels(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    problem = field_problem("megapixels", value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _output_format(text: str) -> str:
    if text in ("auto", "jsonl", "csv"):
        raise argparse.ArgumentTypeError(
            "--format is the format the images are stored in (png, jpeg, webp); the prompts file's format is "
            "--input-format"
        )
    if text not in OUTPUT_FORMATS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    return text


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number ≥ 0")
    return value


def _timeout(text: str) -> float:
    value = _positive_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _add_globals(parser: argparse.ArgumentParser, *, in_subcommand: bool) -> None:
    # In subcommands the defaults are SUPPRESS, so an option given before the subcommand is not overwritten.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if in_subcommand else value

    group = parser.add_argument_group("connection (before or after the command)")
    group.add_argument(
        "--api-url",
        metavar="URL",
        default=default(None),
        help=f"base URL of the API, e.g. http://127.0.0.1:3000 or https://<id>.execute-api.<region>.amazonaws.com/prod"
        f" (default: ${ENV_URL})",
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        default=default(None),
        help=f"the API key sent as x-api-key (default: ${ENV_KEY}; the variable keeps it out of process lists)",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_timeout,
        default=default(DEFAULT_TIMEOUT),
        help=f"timeout of each HTTP request (default: {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="no progress bars or notes; errors and failure summaries are still printed",
    )


def _add_poll_interval(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=DEFAULT_POLL_INTERVAL,
        metavar="SECONDS",
        help=f"seconds between polls while the job moves; backs off up to {MAX_POLL_INTERVAL:g} s while it does "
        f"not (default: {DEFAULT_POLL_INTERVAL:g})",
    )


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    _add_globals(common, in_subcommand=True)

    parser = argparse.ArgumentParser(
        prog="flux-images", description=DESCRIPTION, epilog=EXAMPLES, formatter_class=formatter
    )
    _add_globals(parser, in_subcommand=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser(
        "submit",
        parents=[common],
        formatter_class=formatter,
        help="submit prompts as a job (uploaded as a file above 1,000), then (by default) wait and download",
        description=f"""\
Submit prompts as jobs (POST /v1/jobs), then by default wait for them and download the images.

Prompts come from a file (or '-' for standard input) and/or --prompt arguments:
  JSONL  one JSON value a line: a string (the prompt) or an object with the fields of POST /v1/images
         {{"prompt": "a red fox", "seed": 7, "num_steps": 4, "width": 768, "height": 512}}
         (blank lines and lines starting with '#' are skipped)
  CSV    a header line naming the columns: prompt (required), seed, num_steps, width, height;
         an empty cell means the default
--width/--height/--num-steps/--seed are defaults: a line's own value wins. Everything is checked before
anything is sent; each problem names its file:line and field.

A job sent inline takes at most {MAX_ITEMS_PER_JOB:,} items. A larger input is uploaded as a JSONL file
(POST /v1/uploads, then a PUT to the URL it gives) and submitted as ONE job from that file, or one job per
{MAX_LINES_PER_UPLOAD:,} items. Against an older deployment without POST /v1/uploads it is split into jobs of at
most {MAX_ITEMS_PER_JOB:,} items instead (each downloaded into its own directory).

Each job is sent with an Idempotency-Key derived from its content (or from --idempotency-key), so running the
same command again after a network error or Ctrl-C finds the same job instead of creating a second one, and
carries on waiting and downloading (the upload a job was made from is remembered under
$XDG_CACHE_HOME/flux-images, ~/.cache by default, so a re-run sends the same request). To generate the same
input again as a new job, pass a new --idempotency-key.""",
        epilog="""\
examples:
  flux-images submit prompts.jsonl
  flux-images submit prompts.csv --width 768 --height 512 --num-steps 4 --out ./batch
  cat prompts.jsonl | flux-images submit - --no-wait --metadata '{"campaign": "spring"}'
  flux-images submit --prompt 'a lighthouse at dusk' --seed 15
  flux-images submit prompts.jsonl --webhook-url https://hooks.example.com/flux --no-wait""",
    )
    submit.add_argument(
        "prompts_file", nargs="?", metavar="PROMPTS_FILE|-", help="JSONL or CSV file of prompts; '-' reads stdin"
    )
    submit.add_argument(
        "--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable; after the file's)"
    )
    submit.add_argument(
        "--input-format",
        choices=["auto", "jsonl", "csv"],
        default="auto",
        help="input format (default: by extension/content)",
    )
    defaults = submit.add_argument_group("defaults for every item (a line's own value wins)")
    defaults.add_argument("--width", type=_field_type("width"), metavar="PX", help="256–2048, multiple of 16 [1024]")
    defaults.add_argument("--height", type=_field_type("height"), metavar="PX", help="256–2048, multiple of 16 [1024]")
    defaults.add_argument("--num-steps", type=_field_type("num_steps"), metavar="N", help="1–8 [4]")
    defaults.add_argument(
        "--num-images",
        type=_field_type("num_images"),
        metavar="N",
        help="1–4 images per prompt, seeds seed, seed+1, … (each its own job item) [1]",
    )
    defaults.add_argument(
        "--aspect-ratio", choices=ASPECT_RATIOS, help="a size preset instead of --width/--height [1:1 at 1 MP]"
    )
    defaults.add_argument(
        "--megapixels", type=_megapixels, metavar="MP", help="with --aspect-ratio: 0.0625–4 (1 = 1024x1024) [1]"
    )
    defaults.add_argument(
        "--format",
        dest="output_format",
        type=_output_format,
        metavar="{png,jpeg,webp}",
        help="store the images in this format [as generated: png]",
    )
    defaults.add_argument(
        "--quality",
        dest="output_quality",
        type=_field_type("output_quality"),
        metavar="Q",
        help="1–100, jpeg/webp [90]",
    )
    defaults.add_argument(
        "--seed", type=_field_type("seed"), metavar="N", help="0–4294967295 [picked by the service per item]"
    )
    job = submit.add_argument_group("job")
    job.add_argument("--webhook-url", metavar="URL", help="https URL the signed final job document is POSTed to")
    job.add_argument("--metadata", metavar="JSON", help="a JSON object (≤ 2,048 bytes) echoed in the job and events")
    job.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="Idempotency-Key of the job (default: derived from the content; with several jobs, -partNofM is appended)",
    )
    flow = submit.add_argument_group("after submitting")
    flow.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for the job(s) and download the images (default: --wait)",
    )
    flow.add_argument(
        "--out",
        metavar="DIR",
        help="download directory (default: ./flux-images-<job id>; with several jobs: DIR/<job id>)",
    )
    _add_poll_interval(flow)
    flow.add_argument("--dry-run", action="store_true", help="check the input and show the jobs; send nothing")
    submit.set_defaults(handler=cmd_submit)

    wait = commands.add_parser(
        "wait",
        parents=[common],
        formatter_class=formatter,
        help="follow a job with a progress bar until it is finished",
        description="Poll GET /v1/jobs/{id} until the job is finished, with a progress bar (finished / total and "
        "the counts), then print a summary. Ctrl-C stops waiting; the job is not canceled: run the same command "
        "again to resume.",
        epilog="example:\n  flux-images wait job_5f0e... && flux-images download job_5f0e... --out ./images",
    )
    wait.add_argument("job_id", metavar="JOB_ID")
    _add_poll_interval(wait)
    wait.set_defaults(handler=cmd_wait)

    download = commands.add_parser(
        "download",
        parents=[common],
        formatter_class=formatter,
        help="download a job's images, verified, with manifest.jsonl and manifest.csv",
        description="""\
Download every succeeded item's image into DIR as <index:04d>-<slug of the prompt>.<ext>, verify each against
the sha256 of the job document, and write manifest.jsonl and manifest.csv (one record per item: index, status,
prompt, seed, file, sha256, bytes, width, height, error code and message).

A finished job's results file (results.jsonl) gives every item's outcome in one read; the image URLs then come
from the job's pages, 100 items per API call (or GET /v1/images/{id} for a few images far apart, when that is
fewer calls): about one call per 100 images, never one per image. Without a results file (an older deployment,
or a job still running) the items are read from the job's pages. The results file names no prompts: failed and
canceled items have an empty prompt in the manifest, unless `submit` downloads the job it has just submitted.

Resumable: files already present with the right sha256 are not fetched again, and a file is written as
<name>.part and renamed only once complete and verified. Expired URLs are renewed by reading their page of the
job (or the image) again. A job that is still running can be downloaded: what has succeeded so far is fetched;
run it again later.""",
        epilog="example:\n  flux-images download job_5f0e... --out ./images",
    )
    download.add_argument("job_id", metavar="JOB_ID")
    download.add_argument("--out", metavar="DIR", help="directory (default: ./flux-images-<job id>)")
    download.set_defaults(handler=cmd_download)

    status = commands.add_parser(
        "status",
        parents=[common],
        formatter_class=formatter,
        help="one-shot summary of a job",
        description="Print a job's status, counts, first failures, dates, results file (s3_uri), webhook delivery and "
        "metadata. "
        "Exit code 1 when some items failed or were canceled.",
    )
    status.add_argument("job_id", metavar="JOB_ID")
    status.add_argument("--json", action="store_true", help="print the job document (every page of items) as JSON")
    status.set_defaults(handler=cmd_status)

    cancel = commands.add_parser(
        "cancel",
        parents=[common],
        formatter_class=formatter,
        help="cancel a job (DELETE): items not started yet end canceled",
        description="Cancel a job: items not yet started are never generated and end 'canceled'; items already "
        "running finish. Canceling a finished job changes nothing.",
    )
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.set_defaults(handler=cmd_cancel)
    return parser


# ---------------------------------------------------------------------------------------------------- helpers
def make_client(args: argparse.Namespace, console: Console) -> ApiClient:
    url = (args.api_url or os.environ.get(ENV_URL) or "").strip()
    if not url:
        raise UsageError(
            f"no API URL: pass --api-url or set {ENV_URL} (http://127.0.0.1:3000 for `make run`; "
            "the stack's ApiUrl output when deployed)"
        )
    key = (args.api_key or os.environ.get(ENV_KEY) or "").strip()
    if not key:
        raise UsageError(f"no API key: pass --api-key or set {ENV_KEY} (`make run` prints the local key)")
    if not key.isascii() or not key.isprintable():
        raise UsageError("the API key has characters that cannot be sent in a header (check for stray quotes)")
    url = check_api_url(url)
    if url.startswith("http://") and not is_loopback(url):
        console.warn(f"{url} is plain http: the API key travels unencrypted")
    return ApiClient(url, key, timeout=args.timeout, on_retry=console.info)


def _job_id(document: dict[str, Any]) -> str:
    job_id = document.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise ApiError(202, "bad_response", "the answer has no job id", context="POST /v1/jobs")
    return job_id


def _detail_label(plan: JobPlan) -> Callable[[dict[str, Any]], str | None]:
    """Map an API error detail on ``body.items.N…`` back to the input line of item N."""

    def label(detail: dict[str, Any]) -> str | None:
        match = re.search(r"items[.\[](\d+)", str(detail.get("location") or ""))
        if match and int(match.group(1)) < len(plan.sources):
            return plan.sources[int(match.group(1))]
        return None

    return label


def _download(
    client: ApiClient,
    job_id: str,
    directory: Path,
    console: Console,
    requests_: list[dict[str, Any]] | None = None,
) -> int:
    downloader = Downloader(client, directory, progress=not console.quiet, notify=console.info)
    report: DownloadReport = downloader.run(job_id, known_requests=requests_)
    job = report.job
    parts = [f"{report.downloaded} downloaded", f"{report.present} already present"]
    if report.failures:
        parts.append(f"{len(report.failures)} not downloaded")
    manifest_path = report.manifests[0] if report.manifests else directory
    console.info(f"{directory}: {', '.join(parts)}; manifest: {manifest_path}")
    if not jobs.is_terminal(job):
        pending = int(job.get("total") or 0) - jobs.finished(job)
        console.info(
            f"job {job_id} is still {job.get('status')} ({pending} items not finished): "
            f"run `flux-images wait {job_id}` and download again for the rest"
        )
    if report.failures:
        lines = [
            f"{len(report.failures)} image(s) of {job_id} could not be downloaded or verified; "
            f"run `flux-images download {job_id} --out {directory}` again to retry them:"
        ]
        for row in report.failures[:SHOWN_DOWNLOAD_FAILURES]:
            lines.append(f"  {int(row['index']):04d}  {row['error_code']}: {row['error_message']}")
        if len(report.failures) > SHOWN_DOWNLOAD_FAILURES:
            lines.append(f"  … and {len(report.failures) - SHOWN_DOWNLOAD_FAILURES} more (see {manifest_path})")
        console.error("\n".join(lines))
        return EXIT_API
    return jobs.exit_code_of(job)


def _report_job(client: ApiClient, job: dict[str, Any], console: Console) -> int:
    code = jobs.exit_code_of(job)
    failures = jobs.first_failures(client, str(job.get("id"))) if jobs.counts_of(job)["failed"] else []
    console.report(jobs.summary(job, failures), failed=code != EXIT_OK)
    return code


def _items(plan: JobPlan | UploadPlan, *, grouped: bool = False) -> str:
    """A job's items, one per image: "3 items", or "2 prompts, 5 items" when some prompt asks for several."""
    number = "{:,}" if grouped else "{}"
    items = f"{number.format(plan.images)} item{'s' if plan.images != 1 else ''}"
    if plan.images == plan.size:
        return items
    return f"{number.format(plan.size)} prompt{'s' if plan.size != 1 else ''}, {items}"


def _worst(codes: list[int]) -> int:
    for code in (EXIT_API, EXIT_ITEMS_FAILED):
        if code in codes:
            return code
    return max(codes, default=EXIT_OK)


# ---------------------------------------------------------------------------------------------------- commands
def cmd_submit(args: argparse.Namespace, console: Console) -> int:
    if args.prompts_file is None and not args.prompt:
        raise UsageError("nothing to submit: give a prompts file (JSONL or CSV, '-' for stdin) or --prompt TEXT")
    defaults = {name: getattr(args, name) for name in FIELDS if name != "prompt" and getattr(args, name) is not None}
    items = load_items(args.prompts_file, args.prompt, defaults, fmt=args.input_format)
    for name in overridden_defaults(items, defaults):
        console.warn(
            f"--{name.replace('_', '-')} {defaults[name]} changes nothing: every input line sets its own {name} "
            "(a line's own value wins)"
        )
    options: dict[str, Any] = {
        "webhook_url": check_webhook_url(args.webhook_url),
        "metadata": check_metadata(args.metadata),
        "idempotency_key": args.idempotency_key,
    }
    uploads = plan_uploads(items, **options) if len(items) > MAX_ITEMS_PER_JOB else []
    if args.dry_run:
        if uploads:
            for number, upload in enumerate(uploads, start=1):
                console.out(
                    f"job {number}: {_items(upload)} from an upload of {upload.file_bytes:,} bytes "
                    f"({upload.sources[0]} … {upload.sources[-1]})"
                )
            console.info(
                f"(a deployment without POST /v1/uploads gets {len(plan_jobs(items, **options))} jobs of at most "
                f"{MAX_ITEMS_PER_JOB:,} items instead)"
            )
        else:
            for number, plan in enumerate(plan_jobs(items, **options), start=1):
                console.out(f"job {number}: {_items(plan)} ({plan.sources[0]} … {plan.sources[-1]})")
        console.info("input OK; nothing was sent (--dry-run)")
        return EXIT_OK

    client = make_client(args, console)
    try:
        submitted: list[tuple[str, list[dict[str, Any]]]] = []  # (job id, its item requests in index order)
        if uploads:
            submitted = _submit_uploads(client, uploads, console)
        if not submitted:
            submitted = _submit_inline(client, plan_jobs(items, **options), console)
        job_ids = [job_id for job_id, _ in submitted]

        if not args.wait:
            for job_id in job_ids:
                console.info(f"follow with: flux-images wait {job_id}; then: flux-images download {job_id} --out DIR")
            return EXIT_OK

        if len(job_ids) == 1:
            directories = [Path(args.out) if args.out else Path(f"flux-images-{job_ids[0]}")]
        else:
            directories = [Path(args.out) / job_id if args.out else Path(f"flux-images-{job_id}") for job_id in job_ids]

        codes: list[int] = []
        for number, ((job_id, requests_), directory) in enumerate(zip(submitted, directories, strict=True)):
            try:
                job = jobs.wait_for(client, job_id, poll_interval=args.poll_interval, progress=not console.quiet)
                codes.append(_report_job(client, job, console))
                codes.append(_download(client, job_id, directory, console, requests_))
            except KeyboardInterrupt:
                lines = ["stopped; nothing was canceled, the job(s) keep running. Resume with the same command, or:"]
                for rest_id, rest_dir in zip(job_ids[number:], directories[number:], strict=True):
                    lines.append(f"  flux-images wait {rest_id}; flux-images download {rest_id} --out {rest_dir}")
                console.error("\n".join(lines))
                return EXIT_INTERRUPTED
        return _worst(codes)
    finally:
        client.close()


def _found_again(document: dict[str, Any], sent_at: float, console: Console) -> bool:
    """Say so when the API answered with a job created well before this request: the Idempotency-Key (derived
    from the content) is the one of an earlier run, so no new job was made. True when it did."""
    created = parse_time(document.get("created_at"))
    if created is None or created.timestamp() >= sent_at - FOUND_AGAIN_AGE_S:
        return False
    console.warn(
        f"{document.get('id')} is the job an earlier run created ({created:%Y-%m-%d %H:%M:%S} UTC) from the same "
        "input and options: no new job was made. To generate this input again, pass a new --idempotency-key"
    )
    return True


def _submitted_so_far(exc: CliError, job_ids: list[str]) -> None:
    if job_ids:
        exc.message += (
            f"\n  already submitted: {', '.join(job_ids)}; run the same command again to submit the rest "
            "(the jobs already created are found again, not duplicated)"
        )


def _submit_uploads(
    client: ApiClient, plans: list[UploadPlan], console: Console
) -> list[tuple[str, list[dict[str, Any]]]]:
    """One job per upload; an empty list when the deployment has no uploads (the caller then submits inline)."""
    uploader = Uploader(client, UploadLedger(client.base_url), progress=not console.quiet, notify=console.info)
    submitted: list[tuple[str, list[dict[str, Any]]]] = []
    for plan in plans:
        sent_at = time.time()
        try:
            document = uploader.submit(plan)
        except UploadsUnsupported:
            if submitted:
                message = "the route disappeared in the middle of the run"
                raise ApiError(404, "not_found", message, context="POST /v1/uploads") from None
            total = sum(upload.size for upload in plans)
            console.warn(
                f"this deployment has no POST /v1/uploads (an older version): the {total:,} prompts are submitted "
                f"as jobs of at most {MAX_ITEMS_PER_JOB:,} items instead"
            )
            return []
        except CliError as exc:
            _submitted_so_far(exc, [job_id for job_id, _ in submitted])
            raise
        job_id = _job_id(document)
        submitted.append((job_id, [item.request for item in plan.items]))
        console.out(job_id)
        where = f" (prompts {plan.first:,}–{plan.first + plan.size - 1:,})" if len(plans) > 1 else ""
        if not _found_again(document, sent_at, console):
            console.info(f"submitted {job_id}: {_items(plan, grouped=True)} from an upload{where}")
    return submitted


def _submit_inline(client: ApiClient, plans: list[JobPlan], console: Console) -> list[tuple[str, list[dict[str, Any]]]]:
    if len(plans) > 1:
        ranges = ", ".join(f"{plan.first:,}–{plan.first + plan.size - 1:,}" for plan in plans)
        total = sum(plan.size for plan in plans)
        console.info(
            f"{total:,} prompts are submitted as {len(plans)} jobs (a job takes at most "
            f"{MAX_ITEMS_PER_JOB:,} items and {MAX_JOB_BODY_BYTES // 2**20} MiB of JSON): prompts {ranges}"
        )
    submitted: list[tuple[str, list[dict[str, Any]]]] = []
    for plan in plans:
        sent_at = time.time()
        try:
            document = client.create_job(plan.body, plan.idempotency_key)
        except (ApiError, NetworkError) as exc:
            if isinstance(exc, ApiError):
                exc.detail_labels = _detail_label(plan)
            _submitted_so_far(exc, [job_id for job_id, _ in submitted])
            raise
        job_id = _job_id(document)
        submitted.append((job_id, plan.body["items"]))
        console.out(job_id)
        where = f" (prompts {plan.first:,}–{plan.first + plan.size - 1:,})" if len(plans) > 1 else ""
        if not _found_again(document, sent_at, console):
            console.info(f"submitted {job_id}: {_items(plan)}{where}")
    return submitted


def cmd_wait(args: argparse.Namespace, console: Console) -> int:
    client = make_client(args, console)
    try:
        try:
            job = jobs.wait_for(client, args.job_id, poll_interval=args.poll_interval, progress=not console.quiet)
        except KeyboardInterrupt:
            console.error(
                f"stopped waiting; job {args.job_id} keeps running (nothing was canceled). "
                f"Resume with: flux-images wait {args.job_id}"
            )
            return EXIT_INTERRUPTED
        return _report_job(client, job, console)
    finally:
        client.close()


def cmd_download(args: argparse.Namespace, console: Console) -> int:
    client = make_client(args, console)
    directory = Path(args.out) if args.out else Path(f"flux-images-{args.job_id}")
    try:
        return _download(client, args.job_id, directory, console)
    except KeyboardInterrupt:
        console.error(
            f"download interrupted; the verified files are kept. Finish with: "
            f"flux-images download {args.job_id} --out {directory}"
        )
        return EXIT_INTERRUPTED
    finally:
        client.close()


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    client = make_client(args, console)
    try:
        if args.json:
            pages = [page for _, page in client.iter_job_pages(args.job_id)]
            document = {**pages[0], "items": [item for page in pages for item in page.get("items") or []]}
            document.pop("next_cursor", None)
            console.out(json.dumps(document, indent=2, ensure_ascii=False))
            job = document
        else:
            job = client.get_job(args.job_id, limit=1)
            failures = jobs.first_failures(client, args.job_id) if jobs.counts_of(job)["failed"] else []
            console.out(jobs.status_text(job, failures))
        counts = jobs.counts_of(job)
        return EXIT_ITEMS_FAILED if counts["failed"] or counts["canceled"] else EXIT_OK
    finally:
        client.close()


def cmd_cancel(args: argparse.Namespace, console: Console) -> int:
    client = make_client(args, console)
    try:
        job = client.cancel_job(args.job_id)
        console.out(jobs.summary(job, []))
        if not jobs.is_terminal(job) and jobs.counts_of(job)["running"]:
            console.info("items already running finish; `flux-images wait` follows them to the end")
        return EXIT_OK
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse has printed why
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    console = Console(args.quiet)
    try:
        return int(args.handler(args, console))
    except CliError as exc:
        console.error(exc.render())
        return exc.exit_code
    except KeyboardInterrupt:
        console.error("interrupted")
        return EXIT_INTERRUPTED
    except requests.RequestException as exc:  # not expected: the client turns these into NetworkError
        console.error(f"network error: {describe_exception(exc)}")
        return EXIT_API
    except OSError as exc:  # the download directory cannot be written, the disk is full, …
        console.error(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
