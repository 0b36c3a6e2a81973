"""The whole service on one laptop, without Docker or an AWS account: ``make run``.

- a moto server (S3, DynamoDB, Secrets Manager) seeded like template.yaml;
- the Flux Schnell emulator (or any upstream: ``FLUX_API_URL``, the real vendor included);
- a local API Gateway that reads the routes from template.yaml, enforces ``x-api-key`` like a usage plan and
  invokes the real ``lambda_handler`` with genuine REST API proxy events and a Lambda-like context;
- the worker behind the jobs queue, through a local SQS event source mapping configured like the template's.

The functions run in one of two modes. By default (``make run``) the source tree is imported into this process.
With ``built`` (``make run-built``, ``python -m devstack --built``) they run from what ``sam build`` produced, each
in child processes of a bare Python 3.12 with the layers in Lambda's order (``devstack.runtime``), with the
artefact's arm64 extension modules swapped for the host's builds of the same versions (``devstack.artefact``).

Development tooling only: nothing here is deployed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import platform
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from devstack.artefact import (
    BUILD_DIR,
    ArtefactError,
    build_arch,
    ensure_built,
    host_compatible,
    load_artefact,
    swapped_distributions,
)
from devstack.aws import LocalAws, Resources, service_environment
from devstack.flux_emulator import FluxEmulator
from devstack.gateway import (
    LocalApiGateway,
    Route,
    SqsMapping,
    load_api_config,
    load_routes,
    load_sqs_mappings,
    load_template,
)
from devstack.moderation_standin import ModerationStandIn

if TYPE_CHECKING:
    from devstack.runtime import LocalRuntime

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
DEFAULT_API_KEY = "local-dev-key"  # a dummy: the local gateway's usage plan key
HANDLER_MODULES = {"api_handler.lambda_handler": "api_handler", "worker_handler.lambda_handler": "worker_handler"}


def one_at_a_time(handler: Any) -> Any:
    """One warm execution environment: Lambda never runs two invocations in one, and the handler's module state
    (Powertools' current event, logger keys, metrics) assumes it. Concurrent requests queue here locally."""
    lock = threading.Lock()

    def invoke(event: dict[str, Any], context: Any) -> Any:
        with lock:
            return handler(event, context)

    return invoke


def _function_settings(template: Path) -> dict[str, tuple[float, int]]:
    """Each function's Timeout (s) and MemorySize (MB) from the template (Globals.Function, Lambda's defaults)."""
    document = load_template(template)
    defaults = (document.get("Globals") or {}).get("Function") or {}
    settings = {}
    for logical_id, resource in (document.get("Resources") or {}).items():
        if not isinstance(resource, dict) or resource.get("Type") != "AWS::Serverless::Function":
            continue
        properties = {**defaults, **(resource.get("Properties") or {})}
        timeout, memory = properties.get("Timeout", 3), properties.get("MemorySize", 128)
        # A literal, or Lambda's default when the template computes it (an intrinsic function).
        settings[logical_id] = (
            float(timeout) if isinstance(timeout, int | float) else 3.0,
            int(memory) if isinstance(memory, int) else 128,
        )
    return settings


class LocalStack:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 3000,
        api_key: str = DEFAULT_API_KEY,
        flux_api_url: str | None = None,
        flux_api_key: str = Resources.secret_value,
        image_host_allowlist: str | None = None,
        emulator_latency_s: float = 0.0,
        emulator_concurrency_limit: int | None = None,
        moto_port: int = 0,
        emulator_port: int = 0,
        template: Path = TEMPLATE,
        extra_env: dict[str, str] | None = None,
        worker_parameters: dict[str, str] | None = None,
        throttle: tuple[float, int] | None = None,
        built: bool | Path = False,
        moderation: str = "off",
        moderation_port: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.resources = Resources(secret_value=flux_api_key)
        self.aws = LocalAws(host, moto_port)
        self.emulator = (
            None
            if flux_api_url
            else FluxEmulator(
                host=host,
                port=emulator_port,
                api_key=flux_api_key,
                latency_s=emulator_latency_s,
                concurrency_limit=emulator_concurrency_limit,
            )
        )
        self._flux_api_url = flux_api_url
        # The ApplyGuardrail stand-in always runs (tests switch MODERATION_MODE); ``moderation`` is the mode the
        # functions start with: "both" for `make run`, "off" unless asked for the test session.
        self.moderation = ModerationStandIn(host=host, port=moderation_port)
        self.moderation_mode = moderation
        self._allowlist = image_host_allowlist
        self._template = template
        self._extra_env = extra_env or {}
        self.gateway: LocalApiGateway | None = None
        self.handlers: dict[str, ModuleType] = {}
        self.pollers: list[Any] = []
        self._worker_parameters = worker_parameters or {}
        self._throttle = throttle  # (rate, burst) instead of the template's usage plan, e.g. for a fuzzing client
        # The built artefact's folder (True: .aws-sam/build), or False for the source tree in this process.
        self._build_dir: Path | None = None if built is False else BUILD_DIR if built is True else Path(built)
        self.runtime: LocalRuntime | None = None  # built mode: the functions' child processes
        self.swapped: list[str] = []  # name==version of the extension modules swapped for the host's
        self.build_arch: str | None = None  # the architecture the artefact was built for

    @property
    def built(self) -> bool:
        return self._build_dir is not None

    # ------------------------------------------------------------------------------------------ lifecycle
    def _code_on_path(self) -> None:
        """Make the functions' and layers' code importable the way Lambda lays it out: each function's CodeUri
        and each layer's ContentUri (``/opt/python``) on the module search path."""
        resources = (load_template(self._template).get("Resources") or {}).values()
        for resource in resources:
            properties = resource.get("Properties") or {} if isinstance(resource, dict) else {}
            uri = properties.get("CodeUri") or properties.get("ContentUri")
            folder = (self._template.parent / uri).resolve() if isinstance(uri, str) else None
            if folder is not None and folder.is_dir() and str(folder) not in sys.path:
                sys.path.insert(0, str(folder))

    def start(self) -> LocalStack:
        if not self.built:
            self._code_on_path()
        self.aws.start()
        self.seeded = self.aws.seed(self.resources)
        if self.emulator is not None:
            self.emulator.start()
            flux_url = self.emulator.url
            allowlist = self._allowlist or self.host
        else:
            assert self._flux_api_url is not None
            flux_url = self._flux_api_url
            allowlist = self._allowlist or "pub-*.r2.dev"
        local_images = self.emulator is not None
        self.moderation.start()
        env = service_environment(
            self.aws,
            self.resources,
            self.seeded,
            flux_api_url=flux_url,
            image_host_allowlist=allowlist,
            allow_local_images=local_images,
            moderation_url=self.moderation.url,
            moderation_mode=self.moderation_mode,
            extra=self._extra_env,
        )
        routes = load_routes(self._template)
        mappings = load_sqs_mappings(self._template, parameters=self._worker_parameters)
        handlers: dict[str, Any] | Any
        if self.built:
            handlers = self._start_runtime(env, routes, mappings).invoke
        else:
            os.environ.update(env)  # the in-process "Lambda" reads its configuration like the real one does
            # Requests that publish no metric (a 422, the docs) make Powertools warn; in Lambda nobody sees it.
            warnings.filterwarnings("ignore", "No application metrics to publish", UserWarning)
            handlers = {}
            for route in routes:
                module = self._module(route.function_id, route.handler)
                handlers[route.function_id] = one_at_a_time(module.lambda_handler)
        # The template's stage, usage-plan throttle and gateway responses, so local errors look like deployed ones.
        api_config = load_api_config(self._template).gateway_kwargs()
        if self._throttle is not None:
            api_config.update(throttle_rate=self._throttle[0], throttle_burst=self._throttle[1])
        self.gateway = LocalApiGateway(
            routes, handlers, api_keys=[self.api_key], host=self.host, port=self.port, **api_config
        )
        self.gateway.start()
        self.port = self.gateway.port
        self._start_workers(mappings)
        return self

    def _module(self, function_id: str, handler: str | None) -> ModuleType:
        """In-process mode: the handler's module of the source tree, imported once."""
        module_name = HANDLER_MODULES.get(handler or "")
        if module_name is None:
            raise RuntimeError(f"{function_id}: no local module for handler {handler!r}")
        module = self.handlers.get(module_name) or importlib.import_module(module_name)
        self.handlers[module_name] = module
        return module

    def _start_runtime(self, env: dict[str, str], routes: list[Route], mappings: list[SqsMapping]) -> LocalRuntime:
        """Built mode: the artefact's functions in child processes (``devstack.runtime``), made host-compatible."""
        from devstack.runtime import LocalFunction, LocalRuntime

        assert self._build_dir is not None
        runnable = host_compatible(self._build_dir)
        self.swapped = swapped_distributions(runnable)
        arch = build_arch(self._build_dir)
        self.build_arch = "arm64" if arch == "aarch64" else arch
        artefact = load_artefact(runnable)
        settings = _function_settings(self._template)
        # The API: as many environments as the gateway invokes at once; the worker: its mapping's MaximumConcurrency.
        concurrency: dict[str, int | None] = {route.function_id: None for route in routes}
        for mapping in mappings:
            concurrency.setdefault(mapping.function_id, mapping.maximum_concurrency)
        functions = {}
        for function_id, limit in concurrency.items():
            if function_id not in artefact:
                raise RuntimeError(f"{function_id} is not in the build at {self._build_dir}: run `make build`")
            timeout_s, memory_mb = settings.get(function_id, (3.0, 128))
            functions[function_id] = LocalFunction(
                artefact[function_id], env, timeout_s=timeout_s, memory_mb=memory_mb, max_concurrency=limit
            )
        self.runtime = LocalRuntime(functions)
        return self.runtime

    def _start_workers(self, mappings: list[SqsMapping]) -> None:
        """The worker behind the jobs queue, through a local event source mapping configured like the template's."""
        from devstack.sqs_poller import EventSourceMapping

        for mapping in mappings:
            if self.runtime is not None:
                handler = self.runtime.handler(mapping.function_id)
            else:
                handler = self._module(mapping.function_id, mapping.handler).lambda_handler
            poller = EventSourceMapping(
                self.seeded.jobs_queue_url,
                handler,
                endpoint_url=self.aws.endpoint_url,
                batch_size=mapping.batch_size,
                batching_window_s=mapping.batching_window_s,
                maximum_concurrency=mapping.maximum_concurrency,
                function_timeout_s=mapping.function_timeout_s,
                function_name=mapping.function_id,
            )
            poller.start()
            self.pollers.append(poller)

    def stop(self) -> None:
        for poller in self.pollers:
            poller.stop()
        if self.gateway is not None:
            self.gateway.stop()
        if self.runtime is not None:
            self.runtime.stop()
        if self.emulator is not None:
            self.emulator.stop()
        self.moderation.stop()
        self.aws.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def mode(self) -> list[str]:
        """The banner's lines saying what runs the functions."""
        if self.runtime is None:
            return ["  Functions      the source tree (functions/, layers/) imported into this process"]
        assert self._build_dir is not None
        try:
            where = self._build_dir.resolve().relative_to(Path.cwd())
        except ValueError:
            where = self._build_dir
        first = next(iter(self.runtime.functions.values()))
        lines = [
            f"  Functions      the built artefact {where}/ (make build), not the source tree: each function in",
            f"                 child processes of {first.python} -I -S,",
            "                 its folder then its layers on sys.path, as Lambda lays them out",
        ]
        if self.swapped:
            host = platform.machine()
            lines += [
                f"  Swapped        the build's {self.build_arch} extension modules for the host's {host} builds",
                f"                 of the same versions: {', '.join(self.swapped)}",
            ]
        return lines

    def banner(self) -> str:
        upstream = self.emulator.url if self.emulator else self._flux_api_url
        body = '{"prompt": "a cozy mountain cabin under a starry night sky", "width": 512, "height": 512}'
        return "\n".join(
            [
                "",
                "Flux image service — local stack",
                f"  API            {self.url}      (x-api-key: {self.api_key})",
                f"  Swagger UI     {self.url}/docs",
                f"  OpenAPI        {self.url}/openapi.json",
                f"  Flux upstream  {upstream}" + ("   (emulator)" if self.emulator else ""),
                f"  AWS (moto)     {self.aws.endpoint_url}   (AWS_ENDPOINT_URL for the aws CLI)",
                f"                 bucket={self.resources.bucket} table={self.resources.table}",
                f"  Worker         jobs queue {self.resources.jobs_queue} -> "
                + ", ".join(f"{p.function_name} (up to {p.maximum_concurrency} at once)" for p in self.pollers),
                f"  Events         copied to the SQS queue {self.resources.events_capture_queue}",
                f"  Moderation     {self.moderation_mode} (ApplyGuardrail stand-in {self.moderation.url}; a prompt with"
                " [[unsafe]] or [[unsafe-image]] is blocked)",
                *self.mode(),
                "",
                "Try it:",
                f"  curl -s -X POST {self.url}/v1/images -H 'x-api-key: {self.api_key}' \\",
                f"       -H 'content-type: application/json' -d '{body}'",
                "",
                "Ctrl-C stops everything.",
                "",
            ]
        )


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="devstack", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")), help="API port (env PORT)")
    parser.add_argument(
        "--api-key", default=os.environ.get("LOCAL_API_KEY", DEFAULT_API_KEY), help="x-api-key (env LOCAL_API_KEY)"
    )
    parser.add_argument(
        "--flux-api-url",
        default=os.environ.get("FLUX_API_URL") or None,
        help="use this upstream instead of the emulator (env FLUX_API_URL), e.g. the real vendor",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=_env_float("FLUX_EMULATOR_LATENCY", 0.5),
        help="emulator latency in seconds (env FLUX_EMULATOR_LATENCY)",
    )
    parser.add_argument("--moto-port", type=int, default=int(os.environ.get("MOTO_PORT", "5001")))
    parser.add_argument(
        "--built",
        action="store_true",
        default=os.environ.get("DEVSTACK_BUILT", "").lower() in ("1", "true", "yes"),
        help="run the functions from .aws-sam/build (make build) in child processes, as Lambda runs the artefact,\n"
        "instead of importing the source tree (env DEVSTACK_BUILT=1); make run-built",
    )
    parser.add_argument("--emulator-port", type=int, default=int(os.environ.get("FLUX_EMULATOR_PORT", "8081")))
    parser.add_argument(
        "--moderation",
        choices=["off", "prompt", "image", "both"],
        default=os.environ.get("MODERATION_MODE", "both"),
        help="content moderation mode, against the local ApplyGuardrail stand-in (env MODERATION_MODE; default both)",
    )
    parser.add_argument("--moderation-port", type=int, default=int(os.environ.get("MODERATION_PORT", "8082")))
    args = parser.parse_args(argv)

    stack = LocalStack(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        flux_api_url=args.flux_api_url,
        flux_api_key=os.environ.get("FLUX_API_KEY", Resources.secret_value),
        image_host_allowlist=os.environ.get("IMAGE_HOST_ALLOWLIST") or None,
        emulator_latency_s=args.latency,
        moto_port=args.moto_port,
        emulator_port=args.emulator_port,
        built=args.built,
        moderation=args.moderation,
        moderation_port=args.moderation_port,
    )
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        if args.built:
            ensure_built()  # `make build` when .aws-sam/build is missing or older than the sources
        stack.start()
    except OSError as exc:
        print(
            f"devstack: could not start: {exc} "
            "(is a port in use? set PORT / MOTO_PORT / FLUX_EMULATOR_PORT / MODERATION_PORT)"
        )
        stack.stop()
        return 1
    except (ArtefactError, subprocess.CalledProcessError) as exc:
        print(f"devstack: could not start: {exc}")
        stack.stop()
        return 1
    print(stack.banner(), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stopping.wait()
    print("\nstopping…", file=sys.stderr)
    stack.stop()
    return 0
