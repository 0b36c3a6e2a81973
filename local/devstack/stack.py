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
import ipaddress
import os
import platform
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from devstack.artefact import (
    BUILD_DIR,
    ArtefactError,
    build_arch,
    ensure_built,
    host_compatible,
    load_artefact,
    swapped_distributions,
)
from devstack.aws import REGION, LocalAws, Resources, Seeded, relaxed_settings, service_environment
from devstack.console import ConsoleServer
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
from devstack.serving import check_free

if TYPE_CHECKING:
    from devstack.runtime import LocalRuntime

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
DEFAULT_API_KEY = "local-dev-key"  # a dummy: the local gateway's usage plan key
HANDLER_MODULES = {"api_handler.lambda_handler": "api_handler", "worker_handler.lambda_handler": "worker_handler"}


# ------------------------------------------------------------------------------------------------ ports
# The local stack's listening ports, in one place. PORT moves them all: each other port keeps its offset from
# the API's unless its own variable is set, so a second stack needs only PORT=3100 (moto 5101, emulator 8181).
DEFAULT_PORT = 3000
PORT_OFFSETS = {"MOTO_PORT": 2001, "FLUX_EMULATOR_PORT": 5081, "MODERATION_PORT": 5082}  # 5001, 8081, 8082
CONSOLE_PORT_OFFSET = 3  # the web console's own origin: 3003 with the default PORT (CONSOLE_PORT=-1: none)


def local_ports(environ: Mapping[str, str]) -> dict[str, int]:
    """``{"PORT": …, "MOTO_PORT": …, …}`` from ``environ``; PORT=0 means any free ports, and so does an offset that
    would pass 65535 (a high PORT)."""
    ports = {"PORT": _port(environ, "PORT", DEFAULT_PORT)}
    for name, offset in PORT_OFFSETS.items():
        derived = ports["PORT"] + offset if ports["PORT"] else 0
        ports[name] = _port(environ, name, derived if derived <= 65535 else 0)  # past the last port: any free one
    return ports


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    text = (environ.get(name) or "").strip()
    value = default
    if text:
        try:
            value = int(text)
        except ValueError:
            raise SystemExit(f"devstack: {name}={text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise SystemExit(f"devstack: {name} would be {value}, outside 0-65535: set {name} (or a lower PORT)")
    return value


def _refuse_taken_ports(host: str, wanted: list[tuple[str, str, int]]) -> None:
    """Name a port another program holds before anything starts: moto's start and its seeding take seconds, and
    `make run` would otherwise spend them before saying that PORT is taken. Each server still reports a port taken
    in the meantime when it binds (``_listen``). ``wanted``: (server, variable, port); port 0 (any free one) passes."""
    for what, variable, port in wanted:
        if not port:
            continue
        try:
            check_free(host, port)
        except OSError as exc:
            raise _port_taken(what, variable, host, port, exc) from exc


def _listen(what: str, variable: str, host: str, port: int, start: Callable[[], object]) -> None:
    """Start a server, naming the address and the variable that moves it when the port is taken."""
    try:
        start()
    except OSError as exc:
        raise _port_taken(what, variable, host, port, exc) from exc


def _port_taken(what: str, variable: str, host: str, port: int, exc: OSError) -> OSError:
    reason = exc.strerror or str(exc)
    return OSError(f"{what} cannot listen on {host}:{port}: {reason} (set {variable} to another port)")


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` points at this machine (127.0.0.0/8, ::1, localhost)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        emulator_api_key: str | None = None,
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
        environ: Mapping[str, str] | None = None,
        console_port: int | None = None,
        moderation: str = "off",
        moderation_port: int = 0,
    ) -> None:
        """``emulator_api_key``: the only subscription key the emulator accepts (default: ``flux_api_key``, so
        any key works); ``environ``: where the README's variables are read (default: this process's)."""
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
                api_key=flux_api_key if emulator_api_key is None else emulator_api_key,
                latency_s=emulator_latency_s,
                concurrency_limit=emulator_concurrency_limit,
            )
        )
        self.emulator_checks_key = emulator_api_key is not None
        self._flux_api_url = flux_api_url
        # The ApplyGuardrail stand-in always runs (tests switch MODERATION_MODE); ``moderation`` is the mode the
        # functions start with: "both" for `make run`, "off" unless asked for the test session.
        self.moderation = ModerationStandIn(host=host, port=moderation_port)
        self._moderation_port = moderation_port
        self.moderation_mode = moderation
        self._allowlist = image_host_allowlist
        self._environ = environ
        self._moto_port = moto_port
        self._emulator_port = emulator_port
        self.env: dict[str, str] = {}  # the functions' environment, once started
        self._replaced_env: dict[str, str | None] = {}  # in-process mode: os.environ's values before start()
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
        # The web console on its own origin (None: not served; 0: a free port), first in the CORS allow-list.
        self.console = None if console_port is None else ConsoleServer(host=host, port=console_port)
        self.gateway_parameters: dict[str, str] = {}

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
        _refuse_taken_ports(
            self.host,
            [
                ("moto", "MOTO_PORT", self._moto_port),
                ("the Flux emulator", "FLUX_EMULATOR_PORT", self._emulator_port if self.emulator is not None else 0),
                ("the moderation stand-in", "MODERATION_PORT", self._moderation_port),
                ("the local API Gateway", "PORT", self.port),
                ("the web console", "CONSOLE_PORT", self.console.port if self.console is not None else 0),
            ],
        )
        try:
            self.aws.start()
        except OSError as exc:
            raise OSError(f"{exc} (set MOTO_PORT to another port)") from exc
        self.seeded = self.aws.seed(self.resources)
        if self.emulator is not None:
            _listen("the Flux emulator", "FLUX_EMULATOR_PORT", self.host, self._emulator_port, self.emulator.start)
        _listen("the moderation stand-in", "MODERATION_PORT", self.host, self._moderation_port, self.moderation.start)
        self.env = env = self.function_environment(self.seeded)
        cors_parameters = self._console_cors(env)
        self.gateway_parameters = cors_parameters or {}  # template parameters the local gateway was read with
        routes = load_routes(self._template)
        mappings = load_sqs_mappings(self._template, parameters=self._worker_parameters)
        handlers: dict[str, Any] | Any
        if self.built:
            handlers = self._start_runtime(env, routes, mappings).invoke
        else:
            # The in-process "Lambda" reads its configuration like the real one does; stop() puts back what was
            # there, so a later stack in this process does not read this one's settings as the developer's.
            self._replaced_env = {name: os.environ.get(name) for name in env}
            os.environ.update(env)
            # Requests that publish no metric (a 422, the docs) make Powertools warn; in Lambda nobody sees it.
            warnings.filterwarnings("ignore", "No application metrics to publish", UserWarning)
            handlers = {}
            for route in routes:
                module = self._module(route.function_id, route.handler)
                handlers[route.function_id] = one_at_a_time(module.lambda_handler)
        # The template's stage, usage-plan throttle and gateway responses, so local errors look like deployed ones.
        api_config = load_api_config(self._template, parameters=cors_parameters).gateway_kwargs()
        if self._throttle is not None:
            api_config.update(throttle_rate=self._throttle[0], throttle_burst=self._throttle[1])
        self.gateway = LocalApiGateway(
            routes,
            handlers,
            api_keys=[self.api_key],
            host=self.host,
            port=self.port,
            redirects={"/console": self.console.url} if self.console else None,
            **api_config,
        )
        _listen("the local API Gateway", "PORT", self.host, self.port, self.gateway.start)
        self.port = self.gateway.port
        if self.console is not None:
            self.console.api_url = self.url
            self.console.start()
        self._start_workers(mappings)
        return self

    # ------------------------------------------------------------------------------------------ web console
    def _console_cors(self, env: dict[str, str]) -> dict[str, str] | None:
        """With the console: its origin first in the API's allow-list (the function echoes any listed origin, but
        API Gateway's own errors, a wrong key's 403 included, name only the first), and the template's
        CorsAllowedOrigins parameter set to that list for the local gateway's answers, as a deployment would be."""
        if self.console is None:
            return None
        # Its port, hence its origin, before the function reads CORS_ALLOWED_ORIGINS.
        _listen("the web console", "CONSOLE_PORT", self.host, self.console.port, self.console.bind)
        listed = [origin for origin in env.get("CORS_ALLOWED_ORIGINS", "").split(",") if origin.strip()]
        if "*" in listed:
            return {"CorsAllowedOrigins": "*"}
        origins = [self.console.origin, *(origin for origin in listed if origin != self.console.origin)]
        env["CORS_ALLOWED_ORIGINS"] = ",".join(origins)
        return {"CorsAllowedOrigins": env["CORS_ALLOWED_ORIGINS"]}

    @property
    def upstream_url(self) -> str:
        if self.emulator is not None:
            return self.emulator.url
        assert self._flux_api_url is not None
        return self._flux_api_url

    @property
    def upstream_is_local(self) -> bool:
        return self.emulator is not None or is_loopback_url(self.upstream_url)

    def function_environment(self, seeded: Seeded) -> dict[str, str]:
        """What the functions' environment will be (the emulator must be started first, for its port).

        A loopback upstream (the emulator, or any ``FLUX_API_URL`` on this machine) serves its images from
        loopback, so the mirror's and the webhooks' loopback allowances are set and the mirror's allowlist
        defaults to the upstream's host; any README variable set in ``environ`` wins over these defaults."""
        url = self.upstream_url
        default_allowlist = (urlsplit(url).hostname or self.host) if self.upstream_is_local else "pub-*.r2.dev"
        return service_environment(
            self.aws,
            self.resources,
            seeded,
            flux_api_url=url,
            image_host_allowlist=self._allowlist or default_allowlist,
            allow_local_images=self.upstream_is_local,
            moderation_url=self.moderation.url,
            moderation_mode=self.moderation_mode,
            extra=self._extra_env,
            environ=self._environ,
        )

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
        if self.console is not None:
            self.console.stop()
        if self.runtime is not None:
            self.runtime.stop()
        if self.emulator is not None:
            self.emulator.stop()
        self.moderation.stop()
        self.aws.stop()
        replaced, self._replaced_env = self._replaced_env, {}
        for name, value in replaced.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

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

    def guards(self) -> list[str]:
        """The banner's lines saying which address guards are relaxed against the deployed service."""
        relaxed = relaxed_settings(self.env)
        if not relaxed:
            return ["  Guards         as deployed: the mirror and webhooks fetch https from public addresses only"]
        lines = [f"  Relaxed        {relaxed[0]}"] + [f"                 {phrase}" for phrase in relaxed[1:]]
        return [*lines, "                 (local development only; the template never sets these)"]

    def upstream_line(self) -> str:
        if self.emulator is None:
            return f"  Flux upstream  {self.upstream_url}"
        checks = (
            "checks the key (FLUX_EMULATOR_REQUIRE_KEY)"
            if self.emulator_checks_key
            else "accepts the stored FLUX_API_KEY, whatever it is"
        )
        return f"  Flux upstream  {self.upstream_url}   (emulator; {checks})"

    def console_lines(self) -> list[str]:
        if self.console is None:
            return []
        return [f"  Console        {self.console.url}   (its own origin; {self.url}/console/ leads there)"]

    def banner(self, log_file: Path | None = None, terminal_level: str | None = None) -> str:
        body = '{"prompt": "a cozy mountain cabin under a starry night sky", "width": 512, "height": 512}'
        logs = []
        if log_file is not None:
            logs = [
                f"  Logs           every line, the functions' JSON included, in {_shown_path(log_file)};",
                f"                 here: one line per request and batch, function records at {terminal_level}+ "
                "(LOG_LEVEL)",
            ]
        return "\n".join(
            [
                "",
                "Flux image service — local stack",
                f"  API            {self.url}      (x-api-key: {self.api_key})",
                f"  Swagger UI     {self.url}/docs",
                *self.console_lines(),
                f"  OpenAPI        {self.url}/openapi.json",
                self.upstream_line(),
                *self.guards(),
                f"  AWS (moto)     {self.aws.endpoint_url}   region {REGION}, any access key",
                f"                 bucket={self.resources.bucket} table={self.resources.table}",
                f"  Worker         jobs queue {self.resources.jobs_queue} -> "
                + ", ".join(f"{p.function_name} (up to {p.maximum_concurrency} at once)" for p in self.pollers),
                f"  Events         copied to the SQS queue {self.resources.events_capture_queue}: make events",
                f"  Moderation     {self.moderation_mode} (ApplyGuardrail stand-in {self.moderation.url}; a prompt with"
                " [[unsafe]] or [[unsafe-image]] is blocked)",
                *self.mode(),
                *logs,
                "",
                "Try it:",
                f"  curl -s -X POST {self.url}/v1/images -H 'x-api-key: {self.api_key}' \\",
                f"       -H 'content-type: application/json' -d '{body}'",
                "",
                "Ctrl-C stops everything.",
                "",
            ]
        )


def _shown_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


def _env_float(environ: Mapping[str, str], name: str, default: float) -> float:
    value = (environ.get(name) or "").strip()
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"devstack: {name}={value!r} is not a number") from None


def parse_args(argv: list[str] | None, environ: Mapping[str, str]) -> argparse.Namespace:
    """The command line, with the README's variables (read from ``environ``) as defaults."""
    ports = local_ports(environ)
    parser = argparse.ArgumentParser(
        prog="devstack", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--host", default=environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=ports["PORT"], help="API port (env PORT) [3000]")
    parser.add_argument(
        "--api-key", default=environ.get("LOCAL_API_KEY") or DEFAULT_API_KEY, help="x-api-key (env LOCAL_API_KEY)"
    )
    parser.add_argument(
        "--flux-api-url",
        default=environ.get("FLUX_API_URL") or None,
        help="use this upstream instead of the emulator (env FLUX_API_URL), e.g. the real vendor",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=_env_float(environ, "FLUX_EMULATOR_LATENCY", 0.5),
        help="emulator latency in seconds (env FLUX_EMULATOR_LATENCY)",
    )
    parser.add_argument(
        "--moto-port", type=int, default=ports["MOTO_PORT"], help="env MOTO_PORT [PORT + 2001, so 5001]"
    )
    parser.add_argument(
        "--built",
        action="store_true",
        default=environ.get("DEVSTACK_BUILT", "").lower() in ("1", "true", "yes"),
        help="run the functions from .aws-sam/build (make build) in child processes, as Lambda runs the artefact,\n"
        "instead of importing the source tree (env DEVSTACK_BUILT=1); make run-built",
    )
    parser.add_argument(
        "--emulator-port",
        type=int,
        default=ports["FLUX_EMULATOR_PORT"],
        help="env FLUX_EMULATOR_PORT [PORT + 5081, so 8081]",
    )
    parser.add_argument(
        "--console-port",
        type=int,
        default=console_port(environ, ports["PORT"]),
        help="web console port (env CONSOLE_PORT) [PORT + 3, so 3003]; -1: no console",
    )
    parser.add_argument(
        "--moderation",
        choices=["off", "prompt", "image", "both"],
        default=environ.get("MODERATION_MODE") or "both",
        help="content moderation mode, against the local ApplyGuardrail stand-in (env MODERATION_MODE) [both]",
    )
    parser.add_argument(
        "--moderation-port",
        type=int,
        default=ports["MODERATION_PORT"],
        help="the ApplyGuardrail stand-in (env MODERATION_PORT) [PORT + 5082, so 8082]",
    )
    return parser.parse_args(argv)


def console_port(environ: Mapping[str, str], api_port: int) -> int:
    """CONSOLE_PORT, or PORT + 3 (any free port with PORT=0); -1 serves no console."""
    if (environ.get("CONSOLE_PORT") or "").strip() == "-1":
        return -1
    return _port(environ, "CONSOLE_PORT", api_port + CONSOLE_PORT_OFFSET if api_port else 0)


def stack_from_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> LocalStack:
    """The stack ``make run`` starts: every variable the README names, read from ``environ``."""
    return LocalStack(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        flux_api_url=args.flux_api_url,
        flux_api_key=environ.get("FLUX_API_KEY") or Resources.secret_value,
        emulator_api_key=environ.get("FLUX_EMULATOR_REQUIRE_KEY") or None,
        image_host_allowlist=environ.get("IMAGE_HOST_ALLOWLIST") or None,
        emulator_latency_s=args.latency,
        moto_port=args.moto_port,
        emulator_port=args.emulator_port,
        built=args.built,
        environ=environ,
        console_port=None if args.console_port < 0 else args.console_port,
        moderation=args.moderation,
        moderation_port=args.moderation_port,
    )


def main(argv: list[str] | None = None) -> int:
    from devstack.logs import LogRouter, function_log_level, parse_level

    environ = dict(os.environ)
    terminal_level = parse_level(environ.get("LOG_LEVEL"))
    # The functions log at INFO at least (DEBUG with LOG_LEVEL=DEBUG) into the file; POWERTOOLS_LOG_LEVEL wins.
    if not environ.get("POWERTOOLS_LOG_LEVEL"):
        environ["POWERTOOLS_LOG_LEVEL"] = function_log_level(terminal_level)
    args = parse_args(argv, environ)
    log_file = Path(environ.get("DEVSTACK_LOG") or ROOT / "build" / "devstack.log")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log = log_file.open("w", encoding="utf-8")
    lock = threading.Lock()  # one lock: lines from both streams never interleave mid-line
    terminal_out, terminal_err = sys.stdout, sys.stderr
    sys.stdout = LogRouter(log, terminal_out, terminal_level, lock)
    sys.stderr = LogRouter(log, terminal_err, terminal_level, lock)
    try:
        return _run(args, environ, log_file, terminal_level)
    finally:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, LogRouter):
                stream.close_pending()
                stream.flush()
        sys.stdout, sys.stderr = terminal_out, terminal_err
        log.close()


def _run(args: argparse.Namespace, environ: Mapping[str, str], log_file: Path, terminal_level: str) -> int:
    stack = stack_from_environment(args, environ)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    # Ctrl-C (SIGINT) stops it even when it was started with SIGINT ignored, as a non-interactive shell starts a
    # background job (`make run &` in a script, nohup): Python leaves an ignored SIGINT ignored otherwise.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.built:
            ensure_built()  # `make build` when .aws-sam/build is missing or older than the sources
        stack.start()
    except (OSError, ArtefactError, subprocess.CalledProcessError) as exc:
        print(f"devstack: could not start: {exc}", flush=True)
        stack.stop()
        return 1
    print(stack.banner(log_file, terminal_level), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stopping.wait()
    print("\nstopping…", file=sys.stderr)
    stack.stop()
    return 0
