"""Checks of template.yaml.

Two kinds:
- the four tool checks (``sam validate --lint``, ``cfn-lint``, ``checkov``, ``sam build``), run with the isolated
  tools that ``scripts/tools.sh`` installs into ``.tools/bin`` (skipped, saying so, when they are absent);
- structural checks of the protections the service relies on, read from the YAML itself. Each is a ``check_*``
  function run on the real template, and run again on a copy with that protection removed, where it must fail:
  a check that cannot fail protects nothing.
"""

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

pytestmark = pytest.mark.template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"
TOOLS_BIN = ROOT / ".tools" / "bin"

API_ID = "ImageApi"
FUNCTION_ID = "ApiFunction"
BUCKET_ID = "ImagesBucket"
TABLE_ID = "ImagesTable"

# Services holding the service's data (or keys to it): no wildcard action may touch them.
DATA_SERVICES = {"s3", "dynamodb", "secretsmanager", "kms", "sqs", "sns", "ssm", "events", "lambda"}
# SAM policy templates and managed policies that grant far more than the function needs.
BROAD_POLICIES = {
    "S3CrudPolicy",
    "S3FullAccessPolicy",
    "S3ReadPolicy",
    "S3WritePolicy",
    "DynamoDBCrudPolicy",
    "DynamoDBWritePolicy",
    "AWSSecretsManagerGetSecretValuePolicy",
    "KMSDecryptPolicy",
    "AmazonS3FullAccess",
    "AmazonDynamoDBFullAccess",
    "SecretsManagerReadWrite",
    "AdministratorAccess",
    "PowerUserAccess",
}


# ------------------------------------------------------------------------------------------------ loading
class _CfnLoader(yaml.SafeLoader):
    """A safe YAML loader that reads CloudFormation short tags (!Ref, !Sub, ...) as their long forms."""


def _construct_intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_intrinsic)


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    with path.open(encoding="utf-8") as stream:
        return yaml.load(stream, Loader=_CfnLoader)  # a SafeLoader subclass: no arbitrary objects


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


# ------------------------------------------------------------------------------------------------ helpers
def _resource(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    resource = template.get("Resources", {}).get(logical_id)
    assert resource is not None, f"resource {logical_id} is missing"
    return resource


def _props(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    return _resource(template, logical_id).get("Properties") or {}


def _resources_of_type(template: dict[str, Any], type_name: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template.get("Resources", {}).items() if v.get("Type") == type_name}


def _if_branches(value: Any) -> list[Any]:
    """Both branches of an Fn::If (else the value itself): a protection must hold in every branch."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        _, when_true, when_false = value["Fn::If"]
        return [*_if_branches(when_true), *_if_branches(when_false)]
    return [value]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _statements(node: Any) -> Iterator[dict[str, Any]]:
    """Every IAM/resource policy statement anywhere in ``node`` (inside Fn::If branches too)."""
    if isinstance(node, dict):
        statements = node.get("Statement")
        if statements is not None:
            for statement in _as_list(statements):
                for branch in _if_branches(statement):
                    if isinstance(branch, dict):
                        yield branch
        for value in node.values():
            yield from _statements(value)
    elif isinstance(node, list):
        for item in node:
            yield from _statements(item)


def _api_events(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    events = _props(template, FUNCTION_ID).get("Events") or {}
    return {name: event.get("Properties") or {} for name, event in events.items() if event.get("Type") == "Api"}


def _function_env(template: dict[str, Any]) -> dict[str, Any]:
    global_env = (((template.get("Globals") or {}).get("Function") or {}).get("Environment") or {}).get("Variables")
    own_env = (_props(template, FUNCTION_ID).get("Environment") or {}).get("Variables")
    return {**(global_env or {}), **(own_env or {})}


def _function_setting(template: dict[str, Any], key: str) -> Any:
    own = _props(template, FUNCTION_ID)
    if key in own:
        return own[key]
    return ((template.get("Globals") or {}).get("Function") or {}).get(key)


# ------------------------------------------------------------------------------------- structural checks
def check_bucket_private(t: dict[str, Any]) -> None:
    props = _props(t, BUCKET_ID)
    block = props.get("PublicAccessBlockConfiguration") or {}
    for flag in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"):
        assert block.get(flag) is True, f"{BUCKET_ID}: PublicAccessBlockConfiguration.{flag} must be true"
    rules = (props.get("OwnershipControls") or {}).get("Rules") or []
    assert {"ObjectOwnership": "BucketOwnerEnforced"} in rules, f"{BUCKET_ID}: ACLs must be disabled"
    assert "AccessControl" not in props, f"{BUCKET_ID}: no canned ACL"


def check_bucket_encrypted(t: dict[str, Any]) -> None:
    rules = ((_props(t, BUCKET_ID).get("BucketEncryption") or {}).get("ServerSideEncryptionConfiguration")) or []
    assert rules, f"{BUCKET_ID}: default encryption is missing"
    for rule in rules:
        for default in _if_branches(rule.get("ServerSideEncryptionByDefault")):
            assert isinstance(default, dict), f"{BUCKET_ID}: every encryption branch must name an algorithm"
            assert default.get("SSEAlgorithm") in {"AES256", "aws:kms", "aws:kms:dsse"}


def _bucket_policy_statements(t: dict[str, Any]) -> list[dict[str, Any]]:
    policies = [
        props
        for props in (r.get("Properties") or {} for r in _resources_of_type(t, "AWS::S3::BucketPolicy").values())
        if props.get("Bucket") == {"Ref": BUCKET_ID}
    ]
    assert policies, f"{BUCKET_ID} has no bucket policy"
    return [s for p in policies for s in _statements(p.get("PolicyDocument"))]


def _denies_everything_on_bucket(statement: dict[str, Any]) -> bool:
    resources = _as_list(statement.get("Resource"))
    covers_bucket = {"Fn::GetAtt": [BUCKET_ID, "Arn"]} in resources
    covers_objects = {"Fn::Sub": "${" + BUCKET_ID + ".Arn}/*"} in resources
    return (
        statement.get("Effect") == "Deny"
        and statement.get("Principal") in ("*", {"AWS": "*"})
        and set(_as_list(statement.get("Action"))) & {"s3:*", "*"} != set()
        and covers_bucket
        and covers_objects
    )


def check_bucket_denies_insecure_transport(t: dict[str, Any]) -> None:
    found = [
        s
        for s in _bucket_policy_statements(t)
        if _denies_everything_on_bucket(s)
        and str(((s.get("Condition") or {}).get("Bool") or {}).get("aws:SecureTransport")).lower() == "false"
    ]
    assert found, f"{BUCKET_ID}: no statement denying every request without TLS (aws:SecureTransport false)"


def check_bucket_denies_old_tls(t: dict[str, Any]) -> None:
    found = [
        s
        for s in _bucket_policy_statements(t)
        if _denies_everything_on_bucket(s)
        and str(((s.get("Condition") or {}).get("NumericLessThan") or {}).get("s3:TlsVersion")) in ("1.2", "1.3")
    ]
    assert found, f"{BUCKET_ID}: no statement denying TLS older than 1.2 (NumericLessThan s3:TlsVersion)"


def check_lifecycle_bound_to_retention(t: dict[str, Any]) -> None:
    rules = (_props(t, BUCKET_ID).get("LifecycleConfiguration") or {}).get("Rules") or []
    expiring = [
        rule
        for rule in rules
        if rule.get("Status") == "Enabled"
        and rule.get("ExpirationInDays") == {"Ref": "ImageRetentionDays"}
        and (rule.get("Prefix") or (rule.get("Filter") or {}).get("Prefix")) == "images/"
    ]
    assert expiring, f"{BUCKET_ID}: no enabled rule expiring images/ after the ImageRetentionDays parameter"
    aborting = [
        rule
        for rule in rules
        if rule.get("Status") == "Enabled"
        and (rule.get("AbortIncompleteMultipartUpload") or {}).get("DaysAfterInitiation") == 1
    ]
    assert aborting, f"{BUCKET_ID}: incomplete multipart uploads must be aborted after 1 day"
    assert _function_env(t).get("RETENTION_DAYS") == {"Ref": "ImageRetentionDays"}, (
        "RETENTION_DAYS (the records' TTL) must come from the same parameter as the S3 expiry"
    )


def check_stateful_resources_retained(t: dict[str, Any]) -> None:
    for logical_id in (BUCKET_ID, TABLE_ID):
        resource = _resource(t, logical_id)
        assert resource.get("DeletionPolicy") == "Retain", f"{logical_id}: DeletionPolicy must be Retain"
        assert resource.get("UpdateReplacePolicy") == "Retain", f"{logical_id}: UpdateReplacePolicy must be Retain"


def check_table(t: dict[str, Any]) -> None:
    props = _props(t, TABLE_ID)
    assert props.get("BillingMode") == "PAY_PER_REQUEST"
    assert props.get("KeySchema") == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ], f"{TABLE_ID}: key schema must be pk (HASH) + sk (RANGE)"
    assert props.get("TimeToLiveSpecification") == {"AttributeName": "expires_at", "Enabled": True}
    assert (props.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled") is True
    for sse in _if_branches(props.get("SSESpecification")):
        assert isinstance(sse, dict) and sse.get("SSEEnabled") is True, f"{TABLE_ID}: SSE must be enabled"
    assert props.get("DeletionProtectionEnabled") == {"Ref": "TableDeletionProtection"}


def check_no_wildcard_permissions(t: dict[str, Any]) -> None:
    """No Allow statement grants `*`, or any wildcard action or resource on a data service."""
    allows = [s for s in _statements(t.get("Resources")) if s.get("Effect") == "Allow"]
    assert allows, "no IAM statements found: the function's policies moved or vanished"
    for statement in allows:
        where = statement.get("Sid") or json.dumps(statement)[:120]
        actions = [a for a in _as_list(statement.get("Action")) if isinstance(a, str)]
        assert statement.get("NotAction") is None, f"{where}: NotAction grants almost everything"
        for action in actions:
            assert action != "*", f"{where}: Action '*'"
            service = action.split(":", 1)[0].lower()
            if service in DATA_SERVICES:
                assert "*" not in action, f"{where}: wildcard action {action} on a data service"
                assert "*" not in _as_list(statement.get("Resource")), f"{where}: {action} on Resource '*'"
    for logical_id, resource in t.get("Resources", {}).items():
        props = resource.get("Properties") or {}
        for policy in _as_list(props.get("Policies") or []):
            for branch in _if_branches(policy):
                names = {branch} if isinstance(branch, str) else set(branch) if isinstance(branch, dict) else set()
                assert not names & BROAD_POLICIES, f"{logical_id}: broad policy {names & BROAD_POLICIES}"
        for arn in _as_list(props.get("ManagedPolicyArns") or []):
            assert not any(name in json.dumps(arn) for name in BROAD_POLICIES), f"{logical_id}: broad policy {arn}"


def check_function_data_access_scoped(t: dict[str, Any]) -> None:
    """The function reaches only its own objects, its table and the one secret."""
    statements = list(_statements(_props(t, FUNCTION_ID).get("Policies")))
    by_service: dict[str, list[dict[str, Any]]] = {}
    for statement in statements:
        for action in _as_list(statement.get("Action")):
            by_service.setdefault(action.split(":", 1)[0], []).append(statement)
    for statement in by_service.get("s3", []):
        assert statement.get("Resource") == {"Fn::Sub": "${" + BUCKET_ID + ".Arn}/images/*"}, (
            "S3 access must be limited to the images/ prefix of the images bucket"
        )
    for statement in by_service.get("dynamodb", []):
        assert statement.get("Resource") == {"Fn::GetAtt": [TABLE_ID, "Arn"]}
    for statement in by_service.get("secretsmanager", []):
        assert statement.get("Resource") == {"Ref": "FluxSecretArn"}
        assert _as_list(statement.get("Action")) == ["secretsmanager:GetSecretValue"]
    assert {"s3", "dynamodb", "secretsmanager"} <= set(by_service), "the function lost a permission it needs"
    assert not {a for s in statements for a in _as_list(s.get("Action"))} & {
        "s3:DeleteObject",
        "s3:PutObjectAcl",
        "s3:PutBucketPolicy",
        "dynamodb:DeleteItem",
        "dynamodb:Scan",
    }, "the API function must not delete, scan or change access"


def check_api_keys_on_v1_routes_only(t: dict[str, Any]) -> None:
    api_auth = _props(t, API_ID).get("Auth") or {}
    assert not _is_true(api_auth.get("ApiKeyRequired")), (
        "an API-wide ApiKeyRequired would also lock CORS preflight and the docs: require the key per route"
    )
    usage_plan = api_auth.get("UsagePlan") or {}
    assert usage_plan.get("CreateUsagePlan") == "PER_API", "API keys need a usage plan"
    assert usage_plan.get("Throttle") == {
        "RateLimit": {"Ref": "UsagePlanRateLimit"},
        "BurstLimit": {"Ref": "UsagePlanBurstLimit"},
    }
    assert usage_plan.get("Quota") == {
        "Limit": {"Ref": "UsagePlanQuotaLimit"},
        "Period": {"Ref": "UsagePlanQuotaPeriod"},
    }

    events = _api_events(t)
    keyed_paths = set()
    for name, props in events.items():
        assert props.get("RestApiId") == {"Ref": API_ID}, f"{name}: must be on {API_ID}, not the implicit API"
        path, method = props.get("Path", ""), str(props.get("Method", "")).upper()
        requires_key = _is_true((props.get("Auth") or {}).get("ApiKeyRequired"))
        if method == "OPTIONS" or path in ("/openapi.json", "/docs"):
            assert not requires_key, f"{name} ({method} {path}) must not require an API key"
        elif path.startswith("/v1/"):
            assert requires_key, f"{name} ({method} {path}) must require an API key"
            keyed_paths.add(path)
    assert {"/v1/images", "/v1/images/{id}"} <= keyed_paths, "the v1 routes are missing"
    # /{proxy+} does not match paths that have sibling resources: each keyed path needs its own preflight.
    preflight_paths = {p.get("Path") for p in events.values() if str(p.get("Method", "")).upper() == "OPTIONS"}
    assert keyed_paths <= preflight_paths, f"no OPTIONS route for {sorted(keyed_paths - preflight_paths)}"
    assert "/{proxy+}" in preflight_paths


def check_gateway_responses(t: dict[str, Any]) -> None:
    responses = _props(t, API_ID).get("GatewayResponses") or {}
    assert {"DEFAULT_4XX", "DEFAULT_5XX"} <= set(responses), "DEFAULT_4XX and DEFAULT_5XX must be customised"
    context = {
        "$context.error.messageString": json.dumps("Forbidden"),
        "$context.requestId": "c0ffee",
    }
    for response_type, spec in responses.items():
        headers = (spec.get("ResponseParameters") or {}).get("Headers") or {}
        assert "Access-Control-Allow-Origin" in headers, f"{response_type}: browsers cannot read it without CORS"
        for body in (spec.get("ResponseTemplates") or {}).values():
            for variable, value in context.items():
                body = body.replace(variable, value)
            assert "$" not in body, f"{response_type}: unknown variable left in {body}"
            try:
                parsed = json.loads(body)
            except json.JSONDecodeError as exc:
                raise AssertionError(f"{response_type}: the body is not JSON: {body}") from exc
            error = parsed.get("error") if isinstance(parsed, dict) else None
            assert isinstance(error, dict), f"{response_type}: not the service's error shape: {body}"
            assert set(error) == {"code", "message", "request_id"}, f"{response_type}: not the service's error shape"
            assert re.fullmatch(r"[a-z_]+", error["code"]), f"{response_type}: code must be snake_case"
            assert error["request_id"] == "c0ffee"


def check_function_runtime(t: dict[str, Any]) -> None:
    assert _function_setting(t, "Runtime") == "python3.12"
    assert _function_setting(t, "Architectures") == ["arm64"]
    assert _function_setting(t, "Tracing") == "Active"
    assert int(_function_setting(t, "Timeout")) <= 29, "API Gateway gives up after 29 s: the function must too"
    assert _props(t, FUNCTION_ID).get("Handler") == "api_handler.lambda_handler"
    assert _props(t, FUNCTION_ID).get("CodeUri") == "functions/api/"
    log_group = (_props(t, FUNCTION_ID).get("LoggingConfig") or {}).get("LogGroup")
    assert log_group == {"Ref": "ApiFunctionLogGroup"}, "the function must log to its own, retention-bound group"
    assert _props(t, "ApiFunctionLogGroup").get("RetentionInDays") == {"Ref": "LogRetentionDays"}


def check_function_environment(t: dict[str, Any]) -> None:
    env = _function_env(t)
    expected = {
        "POWERTOOLS_SERVICE_NAME": "image-api",
        "POWERTOOLS_METRICS_NAMESPACE": "FluxImageService",
        "POWERTOOLS_LOG_LEVEL": {"Ref": "LogLevel"},
        "FLUX_API_URL": {"Ref": "FluxApiUrl"},
        "FLUX_SECRET_ID": {"Ref": "FluxSecretArn"},
        "IMAGES_BUCKET": {"Ref": BUCKET_ID},
        "IMAGES_TABLE": {"Ref": TABLE_ID},
        "IMAGE_HOST_ALLOWLIST": {"Ref": "ImageHostAllowlist"},
        "MAX_IMAGE_BYTES": {"Ref": "MaxImageBytes"},
        "RETENTION_DAYS": {"Ref": "ImageRetentionDays"},
        "PRESIGNED_URL_TTL_SECONDS": {"Ref": "PresignedUrlTtlSeconds"},
        "CORS_ALLOWED_ORIGINS": {"Ref": "CorsAllowedOrigins"},
        "ENABLE_DOCS": {"Ref": "EnableDocs"},
    }
    for name, value in expected.items():
        assert env.get(name) == value, f"environment variable {name} should be {value!r}, is {env.get(name)!r}"
    # Development-only switches of the mirror guard never reach a deployment.
    assert not {"IMAGE_ALLOW_HTTP", "IMAGE_ALLOW_PRIVATE_ADDRESSES"} & set(env)
    assert "POWERTOOLS_TRACE_DISABLED" not in env, "tracing stays on"


def check_queue_free(t: dict[str, Any]) -> None:
    """No queue yet: update this check when the asynchronous job queue lands (with its DLQ in RedrivePolicy)."""
    types = {resource.get("Type") for resource in t.get("Resources", {}).values()}
    assert not types & {"AWS::SQS::Queue", "AWS::SQS::QueuePolicy"}, "a queue appeared: update these checks"
    for logical_id in _resources_of_type(t, "AWS::Serverless::Function"):
        props = _props(t, logical_id)
        assert "DeadLetterQueue" not in props, f"{logical_id}: a function DLQ is for async invokes only"
        events = props.get("Events") or {}
        assert all(event.get("Type") != "SQS" for event in events.values()), f"{logical_id}: SQS event source"


def check_alarms(t: dict[str, Any]) -> None:
    alarms = _resources_of_type(t, "AWS::CloudWatch::Alarm")
    env = _function_env(t)
    auth = [
        a["Properties"]
        for a in alarms.values()
        if a["Properties"].get("MetricName") == "UpstreamAuthFailures"
        and a["Properties"].get("Namespace") == env.get("POWERTOOLS_METRICS_NAMESPACE")
        and a["Properties"].get("Dimensions") == [{"Name": "service", "Value": env.get("POWERTOOLS_SERVICE_NAME")}]
    ]
    assert auth, "no alarm on UpstreamAuthFailures in the function's metrics namespace and service dimension"
    assert auth[0].get("ComparisonOperator") == "GreaterThanOrEqualToThreshold" and auth[0].get("Threshold") == 1
    five_xx = [
        a["Properties"]
        for a in alarms.values()
        if any(
            ((m.get("MetricStat") or {}).get("Metric") or {}).get("MetricName") == "5XXError"
            for m in a["Properties"].get("Metrics") or []
        )
    ]
    assert five_xx, "no 5XXError-rate alarm on the API"
    api_name = _props(t, API_ID).get("Name")
    for metric in five_xx[0]["Metrics"]:
        dimensions = ((metric.get("MetricStat") or {}).get("Metric") or {}).get("Dimensions")
        if dimensions is not None:
            assert {"Name": "ApiName", "Value": api_name} in dimensions, "5XX alarm watches another API name"
    errors = [a for a in alarms.values() if a["Properties"].get("MetricName") == "Errors"]
    assert errors, "no alarm on the function's Errors"
    for alarm in alarms.values():
        assert alarm["Properties"].get("TreatMissingData") == "notBreaching"


def check_outputs(t: dict[str, Any]) -> None:
    outputs = t.get("Outputs") or {}
    assert {"ApiUrl", "ApiKeyId", "ImagesBucketName", "ImagesTableName", "ApiFunctionName"} <= set(outputs)
    assert outputs["ApiKeyId"]["Value"] == {"Ref": f"{API_ID}ApiKey"}, "the usage plan's generated key"
    assert outputs["ApiUrl"]["Value"] == {
        "Fn::Sub": "https://${" + API_ID + "}.execute-api.${AWS::Region}.${AWS::URLSuffix}/prod"
    }
    assert _props(t, API_ID).get("StageName") == "prod"


def check_parameters_constrained(t: dict[str, Any]) -> None:
    for name, spec in (t.get("Parameters") or {}).items():
        assert spec.get("Description"), f"parameter {name} has no Description"
        if spec.get("Type") == "Number":
            assert "AllowedValues" in spec or "MinValue" in spec, f"parameter {name} is unbounded"
        elif spec.get("Type") == "String":
            assert "AllowedValues" in spec or "AllowedPattern" in spec, f"parameter {name} accepts anything"
    assert "Default" not in t["Parameters"]["FluxSecretArn"], "the deployer must name the secret"


def check_checkov_skips_justified(t: dict[str, Any]) -> None:
    for logical_id, resource in t.get("Resources", {}).items():
        skips = ((resource.get("Metadata") or {}).get("checkov") or {}).get("skip") or []
        for skip in skips:
            assert re.fullmatch(r"CKV2?_AWS_\d+", str(skip.get("id"))), f"{logical_id}: bad skip id {skip}"
            assert len(str(skip.get("comment") or "").strip()) >= 30, f"{logical_id}: {skip.get('id')} has no reason"


CHECKS: list[Callable[[dict[str, Any]], None]] = [
    check_bucket_private,
    check_bucket_encrypted,
    check_bucket_denies_insecure_transport,
    check_bucket_denies_old_tls,
    check_lifecycle_bound_to_retention,
    check_stateful_resources_retained,
    check_table,
    check_no_wildcard_permissions,
    check_function_data_access_scoped,
    check_api_keys_on_v1_routes_only,
    check_gateway_responses,
    check_function_runtime,
    check_function_environment,
    check_queue_free,
    check_alarms,
    check_outputs,
    check_parameters_constrained,
    check_checkov_skips_justified,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
def test_template_structure(template: dict[str, Any], check: Callable[[dict[str, Any]], None]) -> None:
    check(template)


# ------------------------------------------------------------------- the checks fail without the protection
def _res(t: dict[str, Any], logical_id: str) -> dict[str, Any]:
    return t["Resources"][logical_id]


def _p(t: dict[str, Any], logical_id: str) -> dict[str, Any]:
    return t["Resources"][logical_id]["Properties"]


def _bucket_statement(t: dict[str, Any], sid: str) -> dict[str, Any]:
    return next(s for s in _p(t, "ImagesBucketPolicy")["PolicyDocument"]["Statement"] if s.get("Sid") == sid)


def _function_statement(t: dict[str, Any], sid: str) -> dict[str, Any]:
    return next(s for s in _statements(_p(t, FUNCTION_ID)["Policies"]) if s.get("Sid") == sid)


def _event(t: dict[str, Any], name: str) -> dict[str, Any]:
    return _p(t, FUNCTION_ID)["Events"][name]["Properties"]


def _rule(t: dict[str, Any], rule_id: str) -> dict[str, Any]:
    return next(r for r in _p(t, BUCKET_ID)["LifecycleConfiguration"]["Rules"] if r.get("Id") == rule_id)


MUTATIONS: dict[str, tuple[Callable[[dict[str, Any]], None], Callable[[dict[str, Any]], Any]]] = {
    "public-acls-allowed": (
        check_bucket_private,
        lambda t: _p(t, BUCKET_ID)["PublicAccessBlockConfiguration"].update(BlockPublicAcls=False),
    ),
    "public-access-block-removed": (
        check_bucket_private,
        lambda t: _p(t, BUCKET_ID).pop("PublicAccessBlockConfiguration"),
    ),
    "acls-enabled": (
        check_bucket_private,
        lambda t: _p(t, BUCKET_ID)["OwnershipControls"]["Rules"][0].update(ObjectOwnership="ObjectWriter"),
    ),
    "encryption-removed": (check_bucket_encrypted, lambda t: _p(t, BUCKET_ID).pop("BucketEncryption")),
    "tls-deny-removed": (
        check_bucket_denies_insecure_transport,
        lambda t: _p(t, "ImagesBucketPolicy")["PolicyDocument"]["Statement"].remove(
            _bucket_statement(t, "DenyInsecureTransport")
        ),
    ),
    "tls-deny-objects-uncovered": (
        check_bucket_denies_insecure_transport,
        lambda t: _bucket_statement(t, "DenyInsecureTransport").update(Resource=[{"Fn::GetAtt": [BUCKET_ID, "Arn"]}]),
    ),
    "tls-deny-turned-allow": (
        check_bucket_denies_insecure_transport,
        lambda t: _bucket_statement(t, "DenyInsecureTransport").update(Effect="Allow"),
    ),
    "old-tls-deny-removed": (
        check_bucket_denies_old_tls,
        lambda t: _p(t, "ImagesBucketPolicy")["PolicyDocument"]["Statement"].remove(
            _bucket_statement(t, "DenyTlsBelow12")
        ),
    ),
    "expiry-hardcoded": (
        check_lifecycle_bound_to_retention,
        lambda t: _rule(t, "expire-images").update(ExpirationInDays=30),
    ),
    "expiry-disabled": (
        check_lifecycle_bound_to_retention,
        lambda t: _rule(t, "expire-images").update(Status="Disabled"),
    ),
    "multipart-abort-removed": (
        check_lifecycle_bound_to_retention,
        lambda t: _p(t, BUCKET_ID)["LifecycleConfiguration"]["Rules"].remove(
            _rule(t, "abort-incomplete-multipart-uploads")
        ),
    ),
    "bucket-deletable": (check_stateful_resources_retained, lambda t: _res(t, BUCKET_ID).pop("DeletionPolicy")),
    "table-replaceable": (check_stateful_resources_retained, lambda t: _res(t, TABLE_ID).pop("UpdateReplacePolicy")),
    "pitr-off": (
        check_table,
        lambda t: _p(t, TABLE_ID).update(PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False}),
    ),
    "ttl-removed": (check_table, lambda t: _p(t, TABLE_ID).pop("TimeToLiveSpecification")),
    "sse-off": (check_table, lambda t: _p(t, TABLE_ID).update(SSESpecification={"SSEEnabled": False})),
    "action-star": (check_no_wildcard_permissions, lambda t: _function_statement(t, "ImageRecords").update(Action="*")),
    "s3-star": (
        check_no_wildcard_permissions,
        lambda t: _function_statement(t, "MirrorImages").update(Action=["s3:*"]),
    ),
    "kms-star-in-condition-branch": (
        check_no_wildcard_permissions,
        lambda t: _function_statement(t, "UseCustomerKeyThroughDataServices").update(Action="kms:*"),
    ),
    "resource-star": (
        check_no_wildcard_permissions,
        lambda t: _function_statement(t, "ReadFluxSecret").update(Resource="*"),
    ),
    "crud-policy-template": (
        check_no_wildcard_permissions,
        lambda t: _p(t, FUNCTION_ID)["Policies"].append({"S3CrudPolicy": {"BucketName": {"Ref": BUCKET_ID}}}),
    ),
    "s3-whole-bucket": (
        check_function_data_access_scoped,
        lambda t: _function_statement(t, "MirrorImages").update(Resource={"Fn::Sub": "${ImagesBucket.Arn}/*"}),
    ),
    "s3-delete": (
        check_function_data_access_scoped,
        lambda t: _function_statement(t, "MirrorImages")["Action"].append("s3:DeleteObject"),
    ),
    "key-dropped-on-create": (check_api_keys_on_v1_routes_only, lambda t: _event(t, "CreateImage").pop("Auth")),
    "key-dropped-on-get": (
        check_api_keys_on_v1_routes_only,
        lambda t: _event(t, "GetImage")["Auth"].update(ApiKeyRequired=False),
    ),
    "key-required-on-preflight": (
        check_api_keys_on_v1_routes_only,
        lambda t: _event(t, "PreflightAny").update(Auth={"ApiKeyRequired": True}),
    ),
    "key-required-on-docs": (
        check_api_keys_on_v1_routes_only,
        lambda t: _event(t, "OpenApiSpec").update(Auth={"ApiKeyRequired": True}),
    ),
    "key-required-api-wide": (
        check_api_keys_on_v1_routes_only,
        lambda t: _p(t, API_ID)["Auth"].update(ApiKeyRequired=True),
    ),
    "usage-plan-removed": (check_api_keys_on_v1_routes_only, lambda t: _p(t, API_ID)["Auth"].pop("UsagePlan")),
    "preflight-for-v1-removed": (
        check_api_keys_on_v1_routes_only,
        lambda t: _p(t, FUNCTION_ID)["Events"].pop("PreflightImages"),
    ),
    "gateway-cors-removed": (
        check_gateway_responses,
        lambda t: _p(t, API_ID)["GatewayResponses"]["DEFAULT_4XX"]["ResponseParameters"]["Headers"].pop(
            "Access-Control-Allow-Origin"
        ),
    ),
    "gateway-5xx-removed": (check_gateway_responses, lambda t: _p(t, API_ID)["GatewayResponses"].pop("DEFAULT_5XX")),
    "gateway-body-not-error-shape": (
        check_gateway_responses,
        lambda t: _p(t, API_ID)["GatewayResponses"]["DEFAULT_5XX"].update(
            ResponseTemplates={"application/json": '{"message": $context.error.messageString}'}
        ),
    ),
    "timeout-over-29": (check_function_runtime, lambda t: _p(t, FUNCTION_ID).update(Timeout=60)),
    "tracing-off": (check_function_runtime, lambda t: t["Globals"]["Function"].update(Tracing="PassThrough")),
    "env-var-missing": (
        check_function_environment,
        lambda t: _p(t, FUNCTION_ID)["Environment"]["Variables"].pop("FLUX_SECRET_ID"),
    ),
    "dev-switch-deployed": (
        check_function_environment,
        lambda t: _p(t, FUNCTION_ID)["Environment"]["Variables"].update(IMAGE_ALLOW_PRIVATE_ADDRESSES="true"),
    ),
    "queue-added": (check_queue_free, lambda t: t["Resources"].update(JobsQueue={"Type": "AWS::SQS::Queue"})),
    "auth-alarm-wrong-namespace": (
        check_alarms,
        lambda t: _p(t, "UpstreamAuthFailuresAlarm").update(Namespace="Other"),
    ),
    "api-key-output-removed": (check_outputs, lambda t: t["Outputs"].pop("ApiKeyId")),
    "parameter-unbounded": (
        check_parameters_constrained,
        lambda t: t["Parameters"]["MaxImageBytes"].pop("MinValue"),
    ),
    "skip-without-reason": (
        check_checkov_skips_justified,
        lambda t: _res(t, FUNCTION_ID)["Metadata"]["checkov"]["skip"][0].pop("comment"),
    ),
}


def test_every_check_has_a_mutation() -> None:
    covered = {check for check, _ in MUTATIONS.values()}
    assert covered == set(CHECKS), f"checks never shown to fail: {[c.__name__ for c in set(CHECKS) - covered]}"


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_check_fails_without_the_protection(template: dict[str, Any], mutation: str) -> None:
    check, mutate = MUTATIONS[mutation]
    mutated = copy.deepcopy(template)
    mutate(mutated)
    with pytest.raises(AssertionError):
        check(mutated)


# --------------------------------------------------------------------------------------------- tool checks
def _tool(name: str) -> Path:
    path = TOOLS_BIN / name
    if not (TOOLS_BIN / "sam").exists():
        pytest.skip("template tools not installed in .tools/bin: run `bash scripts/tools.sh` (or `make tools`)")
    if not path.exists():
        pytest.skip(f".tools/bin/{name} is missing: run `bash scripts/tools.sh`")
    return path


def _tool_env(extra_path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["SAM_CLI_TELEMETRY"] = "0"  # no network calls from the SAM CLI
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env.pop("PYTHONPATH", None)  # the tools live in their own environments
    if extra_path:
        env["PATH"] = f"{extra_path}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(args: list[str | Path], *, timeout: float, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env or _tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = f"$ {' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"exit {result.returncode}\n{output[-6000:]}"
    return result.stdout


@pytest.mark.timeout(300)
def test_sam_validate_lint() -> None:
    _run([_tool("sam"), "validate", "--lint", "--template-file", TEMPLATE_PATH], timeout=280)


@pytest.mark.timeout(300)
def test_cfn_lint() -> None:
    _run([_tool("cfn-lint"), TEMPLATE_PATH], timeout=280)


@pytest.mark.timeout(300)
def test_checkov_has_no_failed_checks() -> None:
    stdout = _run(
        [
            _tool("checkov"),
            "--file",
            TEMPLATE_PATH,
            "--framework",
            "cloudformation",
            "--skip-download",
            "--output",
            "json",
        ],
        timeout=280,
    )
    summary = json.loads(stdout)["summary"]
    assert summary["failed"] == 0, f"checkov failed checks: {stdout[:4000]}"
    assert summary["parsing_errors"] == 0, "checkov could not parse the template"
    assert summary["passed"] >= 10, "checkov ran almost no check: did it read the template?"


def _python312_dir() -> str | None:
    finder = ROOT / "scripts" / "find-python.sh"
    if finder.exists():
        found = subprocess.run(["bash", str(finder)], capture_output=True, text=True, check=False)
        if found.returncode == 0 and found.stdout.strip():
            return str(Path(found.stdout.strip()).parent)
    python = shutil.which("python3.12")
    return str(Path(python).parent) if python else None


@pytest.mark.timeout(900)
def test_sam_build(tmp_path: Path) -> None:
    sam = _tool("sam")
    python_dir = _python312_dir()
    if python_dir is None:
        pytest.skip("sam build needs a Python 3.12 (the Lambda runtime) and none was found")
    build_dir = tmp_path / "build"
    _run(
        [
            sam,
            "build",
            "--template-file",
            TEMPLATE_PATH,
            "--build-dir",
            build_dir,
            "--cache-dir",
            tmp_path / "cache",
            "--no-cached",
        ],
        timeout=880,
        cwd=tmp_path,  # keeps SAM's scratch directories out of the repository
        env=_tool_env(python_dir),
    )
    assert (build_dir / "template.yaml").exists()
    assert (build_dir / "ApiFunction" / "api_handler.py").exists(), "the handler was not packaged"
    assert (build_dir / "SharedLayer" / "python" / "imagegen" / "__init__.py").exists(), "imagegen not under python/"
    dependencies = build_dir / "DependenciesLayer" / "python"
    assert (dependencies / "aws_lambda_powertools").is_dir()
    assert list(dependencies.glob("pydantic_core/*aarch64*.so")), "pydantic-core must be built for arm64 (aarch64)"
