"""The one CloudFormation/SAM template reader of the repository: YAML with short tags, intrinsics, settings.

What lives here:

* :func:`load_template` parses a SAM/CloudFormation YAML template with a ``SafeLoader`` that reads short tags
  (``!Ref``, ``!Sub``, ``!GetAtt``...) as their long forms (``{"Ref": ...}``, ``{"Fn::Sub": ...}``). The local
  stack, the artefact reader and the template tests (``tests/template``) all read ``template.yaml`` through it.
* :class:`Intrinsics` evaluates what the local stack needs of a template: parameters (their ``Default`` unless
  overridden), pseudo parameters, conditions and ``Fn::If``/``Equals``/``Not``/``And``/``Or``/``Select``/
  ``Split``/``Join``/``Sub``/``GetAtt``/``FindInMap``. Nothing is deployed locally, so a reference to a resource
  is its logical id and ``Fn::GetAtt`` is ``"Id.Attribute"``; ``Fn::ImportValue``, ``Fn::Base64`` and the like
  are left as they are.
* :func:`load_api_config` (stage, usage-plan throttle and gateway responses of an ``AWS::Serverless::Api``) and
  :func:`load_sqs_mappings` (the ``Type: SQS`` events the local event source mapping emulates).

What does not: the ``Type: Api`` routes and their resolution (``devstack.routes``), the resources the local
stack seeds into moto (``devstack.template_resources``), and anything that serves or invokes (``devstack.gateway``).
A little over 300 lines on purpose: every template setting the local stack evaluates is read here, in one place.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from .lambda_context import DEFAULT_ACCOUNT_ID

__all__ = [
    "IMPLICIT_API_ID",
    "NO_VALUE",
    "ApiConfig",
    "GatewayResponseTemplate",
    "Intrinsics",
    "SqsMapping",
    "as_bool",
    "load_api_config",
    "load_sqs_mappings",
    "load_template",
    "resources_of_type",
]

IMPLICIT_API_ID = "ServerlessRestApi"
"""The logical id SAM gives the API it creates for ``Type: Api`` events that name no ``RestApiId``."""


# libyaml's parser when PyYAML was built with it (the wheels are): the same documents, about six times faster than the
# pure-Python one, which matters because the tests and every local stack parse template.yaml (85 KB) again and again
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _CfnLoader(_SafeLoader):  # type: ignore[misc, valid-type]
    """A safe loader (``SafeLoader``, or libyaml's ``CSafeLoader``) that reads CloudFormation short tags (``!Ref``,
    ``!Sub``, ...) as plain data."""


def _construct_cfn_tag(loader: _CfnLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag_suffix in ("Ref", "Condition"):
        return {tag_suffix: value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_cfn_tag)


def load_template(template_path: str | Path) -> dict[str, Any]:
    """Parse a SAM/CloudFormation YAML template, keeping intrinsic functions as ``{"Fn::X": ...}``.

    Safe: a subclass of a safe loader, so the YAML cannot build arbitrary objects.
    """
    with Path(template_path).open(encoding="utf-8") as stream:
        document = yaml.load(stream, Loader=_CfnLoader)  # noqa: S506 - a safe loader's subclass
    if not isinstance(document, dict):
        raise ValueError(f"{template_path}: not a CloudFormation template (top level is not a mapping)")
    return document


NO_VALUE = object()
"""What ``{"Ref": "AWS::NoValue"}`` evaluates to: the property is left out (lists and mappings drop it)."""
_PSEUDO_PARAMETERS = {
    "AWS::AccountId": DEFAULT_ACCOUNT_ID,
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::StackName": "local",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::NotificationARNs": "",
    "AWS::StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/local/local",
}


class Intrinsics:
    """Evaluates the intrinsic functions the local stack needs: parameters, conditions, mappings, strings.

    Parameters take their ``Default`` unless overridden; a reference to a resource evaluates to its
    logical id and ``Fn::GetAtt`` to ``"Id.Attribute"`` (placeholders; nothing is deployed locally).
    """

    def __init__(self, template: Mapping[str, Any], parameters: Mapping[str, Any] | None = None) -> None:
        self._conditions: Mapping[str, Any] = template.get("Conditions") or {}
        self._mappings: Mapping[str, Any] = template.get("Mappings") or {}
        self._condition_values: dict[str, bool] = {}
        self._parameters: dict[str, str] = {}
        # A Ref to a CommaDelimitedList (or List<...>) parameter is a list, as in CloudFormation.
        self._list_parameters = {
            name
            for name, spec in (template.get("Parameters") or {}).items()
            if isinstance(spec, dict) and str(spec.get("Type", "")).startswith(("CommaDelimitedList", "List<"))
        }
        for name, spec in (template.get("Parameters") or {}).items():
            if isinstance(spec, dict) and "Default" in spec:
                self._parameters[name] = self._text(spec["Default"])
        for name, value in (parameters or {}).items():
            self._parameters[name] = self._text(value)

    @staticmethod
    def _text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list):
            return ",".join(Intrinsics._text(item) for item in value)
        return str(value)

    def condition(self, name: str) -> bool:
        if name not in self._condition_values:
            if name not in self._conditions:
                raise ValueError(f"unknown condition {name!r}")
            self._condition_values[name] = bool(self.resolve(self._conditions[name]))
        return self._condition_values[name]

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self._parameters:
            value = self._parameters[name]
            return [item.strip() for item in value.split(",")] if name in self._list_parameters else value
        return _PSEUDO_PARAMETERS.get(name, name)

    def _sub(self, text: str, variables: Mapping[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return self._text(variables[name])
            return self._text(self._ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [item for item in (self.resolve(v) for v in value) if item is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: r for k, r in ((k, self.resolve(v)) for k, v in value.items()) if r is not NO_VALUE}
        ((key, arg),) = value.items()
        if key == "Ref":
            return self._ref(arg)
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::If":
            name, when_true, when_false = arg
            return self.resolve(when_true if self.condition(name) else when_false)
        if key == "Fn::Equals":
            left, right = (self._text(self.resolve(item)) for item in arg)
            return left == right
        if key == "Fn::Not":
            return not self.resolve(arg[0])
        if key == "Fn::And":
            return all(self.resolve(item) for item in arg)
        if key == "Fn::Or":
            return any(self.resolve(item) for item in arg)
        if key == "Fn::Select":
            index, items = self.resolve(arg[0]), self.resolve(arg[1])
            return items[int(index)]
        if key == "Fn::Split":
            delimiter, text = self.resolve(arg[0]), self.resolve(arg[1])
            return self._text(text).split(delimiter)
        if key == "Fn::Join":
            delimiter, items = self.resolve(arg[0]), self.resolve(arg[1])
            return delimiter.join(self._text(item) for item in items)
        if key == "Fn::Sub":
            if isinstance(arg, str):
                return self._sub(arg, {})
            text, variables = arg
            return self._sub(text, self.resolve(variables))
        if key == "Fn::GetAtt":
            return ".".join(self._text(part) for part in arg)
        if key == "Fn::FindInMap":
            name, top, second = (self._text(self.resolve(item)) for item in arg[:3])
            try:
                return self.resolve(self._mappings[name][top][second])
            except (KeyError, TypeError) as exc:
                raise ValueError(f"Fn::FindInMap: no {name}.{top}.{second} in the template's Mappings") from exc
        return {key: self.resolve(arg)}


def as_bool(value: Any, where: str) -> bool | None:
    """A template boolean (``true``, ``"True"``...); ``None`` when absent; ``ValueError`` naming ``where`` else."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{where}: expected a boolean, got {value!r}")


def resources_of_type(template: Mapping[str, Any], type_name: str) -> list[tuple[str, dict[str, Any]]]:
    """``(logical id, resource)`` of every resource of one ``Type``, in the template's order."""
    return [
        (logical_id, resource)
        for logical_id, resource in (template.get("Resources") or {}).items()
        if isinstance(resource, dict) and resource.get("Type") == type_name
    ]


@dataclass(frozen=True)
class GatewayResponseTemplate:
    """A customised gateway response (``GatewayResponses.<TYPE>`` of an ``AWS::Serverless::Api``).

    ``headers`` map a header name to an API Gateway mapping expression: ``'literal'`` or
    ``method.request.header.<name>``. ``templates`` map a content type to a body template in which
    ``$context.*`` variables are substituted (``$context.error.messageString`` is JSON-quoted).
    """

    status_code: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    templates: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiConfig:
    """Settings of one REST API from the template, for :class:`LocalApiGateway`'s keyword arguments."""

    api_id: str
    stage: str = "prod"
    throttle_rate: float | None = None
    throttle_burst: int | None = None
    gateway_responses: Mapping[str, GatewayResponseTemplate] = field(default_factory=dict)

    def gateway_kwargs(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "throttle_rate": self.throttle_rate,
            "throttle_burst": self.throttle_burst,
            "gateway_responses": self.gateway_responses,
        }


def load_api_config(
    template_path: str | Path,
    api_logical_id: str | None = None,
    *,
    parameters: Mapping[str, Any] | None = None,
) -> ApiConfig:
    """Stage name, usage-plan throttle and gateway responses of an ``AWS::Serverless::Api``.

    With no ``api_logical_id`` the template must declare exactly one ``AWS::Serverless::Api`` (or none:
    the implicit API, which has no such settings). Not read: stage-wide ``MethodSettings`` throttling,
    usage-plan quotas and CORS.
    """
    template = load_template(template_path)
    intrinsics = Intrinsics(template, parameters)
    apis = dict(resources_of_type(template, "AWS::Serverless::Api"))
    if api_logical_id is None:
        if not apis:
            return ApiConfig(api_id=IMPLICIT_API_ID)
        if len(apis) > 1:
            raise ValueError(f"several APIs in the template ({', '.join(apis)}); name one")
        api_logical_id = next(iter(apis))
    if api_logical_id not in apis:
        raise ValueError(f"no AWS::Serverless::Api named {api_logical_id!r}")
    globals_api = intrinsics.resolve((template.get("Globals") or {}).get("Api") or {})
    properties = {**globals_api, **intrinsics.resolve(apis[api_logical_id].get("Properties") or {})}

    throttle = ((properties.get("Auth") or {}).get("UsagePlan") or {}).get("Throttle") or {}
    rate, burst = throttle.get("RateLimit"), throttle.get("BurstLimit")
    responses: dict[str, GatewayResponseTemplate] = {}
    for response_type, spec in (properties.get("GatewayResponses") or {}).items():
        spec = spec or {}
        status = spec.get("StatusCode")
        responses[str(response_type)] = GatewayResponseTemplate(
            status_code=int(status) if status is not None else None,
            headers={str(k): str(v) for k, v in ((spec.get("ResponseParameters") or {}).get("Headers") or {}).items()},
            templates={str(k): str(v) for k, v in (spec.get("ResponseTemplates") or {}).items()},
        )
    return ApiConfig(
        api_id=api_logical_id,
        stage=str(properties.get("StageName") or "prod"),
        throttle_rate=float(rate) if rate is not None else None,
        throttle_burst=int(burst) if burst is not None else (None if rate is None else max(1, math.ceil(float(rate)))),
        gateway_responses=responses,
    )


@dataclass(frozen=True)
class SqsMapping:
    """One ``Type: SQS`` event of a function: what the local event source mapping must emulate."""

    function_id: str
    handler: str | None
    queue_id: str | None
    batch_size: int
    batching_window_s: float
    maximum_concurrency: int
    function_timeout_s: float
    report_batch_item_failures: bool


def load_sqs_mappings(template_path: str | Path, *, parameters: Mapping[str, Any] | None = None) -> list[SqsMapping]:
    """Every ``Type: SQS`` event of every function, with the template's defaults (Lambda's when absent)."""
    template = load_template(template_path)
    intrinsics = Intrinsics(template, parameters)
    globals_function = (template.get("Globals") or {}).get("Function") or {}
    mappings = []
    for function_id, resource in resources_of_type(template, "AWS::Serverless::Function"):
        properties = resource.get("Properties") or {}
        timeout = intrinsics.resolve(properties.get("Timeout", globals_function.get("Timeout", 3)))
        for event in (properties.get("Events") or {}).values():
            if not isinstance(event, dict) or event.get("Type") != "SQS":
                continue
            spec = event.get("Properties") or {}
            scaling = {key: intrinsics.resolve(value) for key, value in (spec.get("ScalingConfig") or {}).items()}
            queue = spec.get("Queue")
            queue_id = None
            if isinstance(queue, dict):
                target = queue.get("Fn::GetAtt") or queue.get("GetAtt")
                queue_id = (target[0] if isinstance(target, list) else str(target).split(".")[0]) if target else None
            mappings.append(
                SqsMapping(
                    function_id=function_id,
                    handler=properties.get("Handler", globals_function.get("Handler")),
                    queue_id=queue_id,
                    batch_size=int(intrinsics.resolve(spec.get("BatchSize", 10))),
                    batching_window_s=float(intrinsics.resolve(spec.get("MaximumBatchingWindowInSeconds", 0))),
                    maximum_concurrency=int(scaling.get("MaximumConcurrency", 1000)),
                    function_timeout_s=float(timeout),
                    report_batch_item_failures="ReportBatchItemFailures"
                    in (intrinsics.resolve(spec.get("FunctionResponseTypes") or []) or []),
                )
            )
    return mappings
