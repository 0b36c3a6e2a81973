"""Checks of template.yaml.

Two kinds:
- the three tool checks (``sam validate --lint``, ``cfn-lint``, ``checkov``), run with the isolated tools that
  ``scripts/tools.sh`` installs into ``.tools/bin`` (skipped, saying so, when they are absent); ``sam build`` is
  the artefact tests' (``tests/artefact``: one build per session, from nothing on a fresh clone);
- structural checks of the protections the service relies on, read from the YAML itself. Each is a ``check_*``
  function run on the real template, and run again on a copy with that protection removed, where it must fail:
  a check that cannot fail protects nothing.
"""

import contextlib
import copy
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from devstack import template as cfn_template

pytestmark = pytest.mark.template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"
TOOLS_BIN = ROOT / ".tools" / "bin"

API_ID = "ImageApi"
FUNCTION_ID = "ApiFunction"
WORKER_ID = "WorkerFunction"
FUNCTION_IDS = (FUNCTION_ID, WORKER_ID)
BUCKET_ID = "ImagesBucket"
TABLE_ID = "ImagesTable"
IDEMPOTENCY_TABLE_ID = "IdempotencyTable"
QUEUE_ID = "JobsQueue"
DLQ_ID = "JobsDeadLetterQueue"
BUS_ID = "EventBus"
WEBHOOK_SECRET_ID = "WebhookSigningSecret"
NO_VALUE = {"Ref": "AWS::NoValue"}
OPTIONAL_TOPIC = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], NO_VALUE]}

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
    # What a SAM `SQS` event attaches: receive/delete on every queue of the account (Resource "*").
    "AWSLambdaSQSQueueExecutionRole",
    "AmazonSQSFullAccess",
    "AmazonEventBridgeFullAccess",
    # What SAM gives its generated CodeDeploy role: sns:Publish to any topic, s3:GetObject in any bucket, any alias.
    "AWSCodeDeployRoleForLambda",
}


# ------------------------------------------------------------------------------------------------ loading
def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template as the local stack reads it: the repository's one CloudFormation loader (devstack.template)."""
    return cfn_template.load_template(path)


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


def _function_env(template: dict[str, Any], function_id: str = FUNCTION_ID) -> dict[str, Any]:
    global_env = (((template.get("Globals") or {}).get("Function") or {}).get("Environment") or {}).get("Variables")
    own_env = (_props(template, function_id).get("Environment") or {}).get("Variables")
    return {**(global_env or {}), **(own_env or {})}


def _function_setting(template: dict[str, Any], key: str, function_id: str = FUNCTION_ID) -> Any:
    own = _props(template, function_id)
    if key in own:
        return own[key]
    return ((template.get("Globals") or {}).get("Function") or {}).get(key)


def _resolve(value: Any, conditions: dict[str, bool]) -> Any:
    """``value`` as deployed when the named conditions have the given truth: their Fn::If resolved, NoValue dropped."""
    if isinstance(value, dict):
        if set(value) == {"Fn::If"} and value["Fn::If"][0] in conditions:
            name, when_true, when_false = value["Fn::If"]
            return _resolve(when_true if conditions[name] else when_false, conditions)
        resolved = {key: _resolve(item, conditions) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item != NO_VALUE}
    if isinstance(value, list):
        return [_resolve(item, conditions) for item in value if _resolve(item, conditions) != NO_VALUE]
    return value


def _number_bound(template: dict[str, Any], value: Any, bound: str) -> int:
    """A literal number, or the MinValue/MaxValue (``bound``) of the Number parameter it references."""
    if isinstance(value, int | str) and str(value).isdigit():
        return int(value)
    assert isinstance(value, dict) and set(value) == {"Ref"}, f"{value!r} is neither a number nor a parameter"
    parameter = (template.get("Parameters") or {}).get(value["Ref"]) or {}
    assert parameter.get("Type") == "Number", f"parameter {value['Ref']} must be a Number"
    assert bound in parameter, f"parameter {value['Ref']} has no {bound}"
    return int(parameter[bound])


# Pseudo parameters of a stack with the longest name CloudFormation allows (128 characters).
LONGEST_STACK_NAME = "s" * 128
PSEUDO_PARAMETERS = {
    "AWS::Partition": "aws",
    "AWS::Region": "ap-southeast-1",
    "AWS::AccountId": "123456789012",
    "AWS::StackName": LONGEST_STACK_NAME,
    "AWS::StackId": (
        f"arn:aws:cloudformation:ap-southeast-1:123456789012:stack/{LONGEST_STACK_NAME}/"
        "5b0b7e40-4f2c-11f0-9f3a-0a1b2c3d4e5f"
    ),
}


def _evaluate(value: Any, pseudo: dict[str, str] = PSEUDO_PARAMETERS) -> Any:
    """The string functions CloudFormation evaluates (Ref of a pseudo parameter, Sub, Select, Split, Join)."""
    if isinstance(value, list):
        return [_evaluate(item, pseudo) for item in value]
    if not isinstance(value, dict) or len(value) != 1:
        return value
    ((function, arg),) = value.items()
    if function == "Ref" and arg in pseudo:
        return pseudo[arg]
    if function == "Fn::Sub":
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        variables = {key: _evaluate(item, pseudo) for key, item in variables.items()}
        names = {**pseudo, **variables}

        def replace(match: re.Match[str]) -> str:
            assert match.group(1) in names, f"cannot evaluate ${{{match.group(1)}}} offline"
            return str(names[match.group(1)])

        return re.sub(r"\$\{([^}!]+)\}", replace, text)
    if function == "Fn::Select":
        return _evaluate(arg[1], pseudo)[int(arg[0])]
    if function == "Fn::Split":
        return str(_evaluate(arg[1], pseudo)).split(arg[0])
    if function == "Fn::Join":
        return arg[0].join(str(item) for item in _evaluate(arg[1], pseudo))
    raise AssertionError(f"cannot evaluate {value!r} offline")


def _sqs_events(template: dict[str, Any], function_id: str) -> list[dict[str, Any]]:
    events = (_props(template, function_id).get("Events") or {}).values()
    return [event.get("Properties") or {} for event in events if event.get("Type") == "SQS"]


def _own_role(template: dict[str, Any], function_id: str) -> str | None:
    """The logical id of the AWS::IAM::Role the function names as its Role, if it names one of this template."""
    role = _props(template, function_id).get("Role")
    if isinstance(role, dict) and isinstance(role.get("Fn::GetAtt"), list) and role["Fn::GetAtt"][1] == "Arn":
        role_id = role["Fn::GetAtt"][0]
        if _resource(template, role_id).get("Type") == "AWS::IAM::Role":
            return str(role_id)
    return None


def _permission_statements(template: dict[str, Any], function_id: str) -> list[dict[str, Any]]:
    """What the function may do: its own role's policies, or the Policies SAM turns into a generated role."""
    role_id = _own_role(template, function_id)
    if role_id is None:
        return list(_statements(_props(template, function_id).get("Policies")))
    documents = [
        branch.get("PolicyDocument")
        for policy in _as_list(_props(template, role_id).get("Policies") or [])
        for branch in _if_branches(policy)
        if isinstance(branch, dict)
    ]
    return list(_statements(documents))


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
        with_key = _resolve(rule.get("ServerSideEncryptionByDefault"), {"HasKmsKey": True})
        assert with_key.get("SSEAlgorithm") in {"aws:kms", "aws:kms:dsse"}, f"{BUCKET_ID}: SSE-KMS when a key is given"
        assert with_key.get("KMSMasterKeyID") == {"Ref": "KmsKeyArn"}, f"{BUCKET_ID}: the customer key when given"


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

    def expiry(prefix: str) -> list[Any]:
        return [
            rule.get("ExpirationInDays")
            for rule in rules
            if rule.get("Status") == "Enabled"
            and (rule.get("Prefix") or (rule.get("Filter") or {}).get("Prefix")) == prefix
        ]

    assert expiry("jobs/") == [{"Ref": "ImageRetentionDays"}], (
        f"{BUCKET_ID}: a job's items and results objects (jobs/) must expire with its images (ImageRetentionDays)"
    )
    assert expiry("uploads/") == [1], f"{BUCKET_ID}: uploaded job files (uploads/) must expire after 1 day"
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
    """Data, queued work, dead letters, logs and the webhook key survive a replacement or a deleted stack."""
    log_groups = _resources_of_type(t, "AWS::Logs::LogGroup")
    assert len(log_groups) >= 3, "the functions' and the API's log groups are missing"
    for logical_id in (BUCKET_ID, TABLE_ID, IDEMPOTENCY_TABLE_ID, QUEUE_ID, DLQ_ID, WEBHOOK_SECRET_ID, *log_groups):
        resource = _resource(t, logical_id)
        assert resource.get("DeletionPolicy") == "Retain", f"{logical_id}: DeletionPolicy must be Retain"
        assert resource.get("UpdateReplacePolicy") == "Retain", f"{logical_id}: UpdateReplacePolicy must be Retain"
    for logical_id, group in log_groups.items():
        # A retained group keeps its name: a fixed one makes the next deploy of the same stack name fail.
        assert "LogGroupName" not in (group.get("Properties") or {}), f"{logical_id}: let CloudFormation name it"
    assert "Name" not in _props(t, WEBHOOK_SECRET_ID), "a retained secret with a fixed name blocks a re-created stack"


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
    with_key = _resolve(props.get("SSESpecification"), {"HasKmsKey": True})
    assert with_key.get("SSEType") == "KMS", f"{TABLE_ID}: SSE-KMS when a key is given"
    assert with_key.get("KMSMasterKeyId") == {"Ref": "KmsKeyArn"}, f"{TABLE_ID}: the customer key when given"
    assert props.get("DeletionProtectionEnabled") == {"Ref": "TableDeletionProtection"}


def check_idempotency_table(t: dict[str, Any]) -> None:
    """The layout Powertools' DynamoDBPersistenceLayer expects, with the same protections as the images table."""
    props = _props(t, IDEMPOTENCY_TABLE_ID)
    assert props.get("BillingMode") == "PAY_PER_REQUEST"
    assert props.get("KeySchema") == [{"AttributeName": "id", "KeyType": "HASH"}], "Powertools keys records by id"
    assert props.get("AttributeDefinitions") == [{"AttributeName": "id", "AttributeType": "S"}]
    assert props.get("TimeToLiveSpecification") == {"AttributeName": "expiration", "Enabled": True}, (
        "Powertools writes the record's expiry to `expiration`: without TTL on it, records pile up forever"
    )
    assert (props.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled") is True
    branches = _if_branches(props.get("SSESpecification"))
    for sse in branches:
        assert isinstance(sse, dict) and sse.get("SSEEnabled") is True, f"{IDEMPOTENCY_TABLE_ID}: SSE must be enabled"
    assert any(sse.get("KMSMasterKeyId") == {"Ref": "KmsKeyArn"} for sse in branches), "the customer key when given"
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


_IMAGE_OBJECTS = json.dumps({"Fn::Sub": "${" + BUCKET_ID + ".Arn}/images/*"})
_IMAGES_TABLE = json.dumps({"Fn::GetAtt": [TABLE_ID, "Arn"]})
_IDEMPOTENCY_TABLE = json.dumps({"Fn::GetAtt": [IDEMPOTENCY_TABLE_ID, "Arn"]})
_QUEUE = json.dumps({"Fn::GetAtt": [QUEUE_ID, "Arn"]})
_DLQ = json.dumps({"Fn::GetAtt": [DLQ_ID, "Arn"]})
_JOB_OBJECTS = json.dumps({"Fn::Sub": "${" + BUCKET_ID + ".Arn}/jobs/*"})
_UPLOADS = json.dumps({"Fn::Sub": "${" + BUCKET_ID + ".Arn}/uploads/*"})
_BUS = json.dumps({"Fn::GetAtt": [BUS_ID, "Arn"]})
_KEY = json.dumps({"Ref": "KmsKeyArn"})


def _grants(*pairs: tuple[str, str]) -> set[tuple[str, str]]:
    return set(pairs)


_SHARED_GRANTS = _grants(
    ("s3:PutObject", _IMAGE_OBJECTS),
    ("s3:GetObject", _IMAGE_OBJECTS),
    ("s3:AbortMultipartUpload", _IMAGE_OBJECTS),
    ("dynamodb:GetItem", _IMAGES_TABLE),
    ("dynamodb:PutItem", _IMAGES_TABLE),
    ("dynamodb:UpdateItem", _IMAGES_TABLE),
    ("dynamodb:Query", _IMAGES_TABLE),
    ("dynamodb:BatchWriteItem", _IMAGES_TABLE),
    ("dynamodb:ConditionCheckItem", _IMAGES_TABLE),
    ("secretsmanager:GetSecretValue", json.dumps({"Ref": "FluxSecretArn"})),
    ("kms:Decrypt", _KEY),  # only when KmsKeyArn is set, and only through the data services (checked below)
    ("kms:GenerateDataKey", _KEY),
    # Only when ModerationMode is not "off", and only this stack's guardrail (check_moderation_optional_and_scoped).
    ("bedrock:ApplyGuardrail", json.dumps({"Fn::GetAtt": ["ModerationGuardrail", "GuardrailArn"]})),
)
# Exactly what each function may do: every (action, resource) pair, nothing more, nothing less.
EXPECTED_GRANTS: dict[str, set[tuple[str, str]]] = {
    FUNCTION_ID: _SHARED_GRANTS
    | _grants(
        ("sqs:SendMessage", _QUEUE),  # also authorises SendMessageBatch
        ("s3:PutObject", _JOB_OBJECTS),  # the job's items object (or the copy of an upload)
        ("s3:GetObject", _JOB_OBJECTS),  # counting an upload's copy; presigned GET of the results file
        ("s3:PutObject", _UPLOADS),  # the presigned PUT of POST /v1/uploads is signed with this role
        ("s3:GetObject", _UPLOADS),  # HeadObject and CopyObject's source
        ("dynamodb:GetItem", _IDEMPOTENCY_TABLE),
        ("dynamodb:PutItem", _IDEMPOTENCY_TABLE),
        ("dynamodb:UpdateItem", _IDEMPOTENCY_TABLE),
        ("dynamodb:DeleteItem", _IDEMPOTENCY_TABLE),  # Powertools deletes the record when the work fails
    ),
    WORKER_ID: _SHARED_GRANTS
    | _grants(
        # Only the worker announces (events, signed webhooks): the API queues an announce message instead.
        ("secretsmanager:GetSecretValue", json.dumps({"Ref": WEBHOOK_SECRET_ID})),
        ("events:PutEvents", _BUS),
        # The event source mapping polls with the worker's role; ChangeMessageVisibility is the worker's backoff.
        ("sqs:ReceiveMessage", _QUEUE),
        ("sqs:DeleteMessage", _QUEUE),
        ("sqs:GetQueueAttributes", _QUEUE),
        ("sqs:ChangeMessageVisibility", _QUEUE),
        ("sqs:SendMessage", _DLQ),  # unparseable messages, moved by the worker itself
        ("sqs:SendMessage", _QUEUE),  # the fan-out's messages; a cancelation out of time continues in a new one
        ("s3:GetObject", _JOB_OBJECTS),  # the fan-out reads a job's items object by byte ranges
        ("s3:PutObject", _JOB_OBJECTS),  # results files, and the items object of an event-driven job
        ("dynamodb:BatchGetItem", _IMAGES_TABLE),  # a redelivery reads item and job in one round trip
        # Its own role replaces SAM's generated one: logs to its own group, traces (no resource-level permissions).
        ("logs:CreateLogStream", json.dumps({"Fn::GetAtt": ["WorkerFunctionLogGroup", "Arn"]})),
        ("logs:PutLogEvents", json.dumps({"Fn::GetAtt": ["WorkerFunctionLogGroup", "Arn"]})),
        *(
            (f"xray:{action}", json.dumps("*"))
            for action in (
                "PutTraceSegments",
                "PutTelemetryRecords",
                "GetSamplingRules",
                "GetSamplingTargets",
                "GetSamplingStatisticSummaries",
            )
        ),
    ),
}
KMS_VIA_SERVICES = [
    {"Fn::Sub": f"{service}.${{AWS::Region}}.amazonaws.com"} for service in ("s3", "secretsmanager", "dynamodb", "sqs")
]


def check_function_data_access_scoped(t: dict[str, Any]) -> None:
    """Each function reaches only its own objects, tables, queues, bus and secrets, with the actions it needs."""
    for function_id, expected in EXPECTED_GRANTS.items():
        statements = _permission_statements(t, function_id)
        granted: set[tuple[str, str]] = set()
        for statement in statements:
            assert statement.get("Effect") == "Allow", f"{function_id}: unexpected statement {statement}"
            for action in _as_list(statement.get("Action")):
                for resource in _as_list(statement.get("Resource")):
                    granted.add((action, json.dumps(resource)))
            if any(str(a).startswith("kms:") for a in _as_list(statement.get("Action"))):
                via = ((statement.get("Condition") or {}).get("StringEquals") or {}).get("kms:ViaService")
                assert sorted(map(json.dumps, _as_list(via))) == sorted(map(json.dumps, KMS_VIA_SERVICES)), (
                    f"{function_id}: the customer key must be usable only through S3, Secrets Manager, DynamoDB "
                    f"and SQS (the encrypted queues need it), not directly: {via}"
                )
        assert not granted - expected, f"{function_id}: grants more than it needs: {sorted(granted - expected)}"
        assert not expected - granted, f"{function_id}: lost a permission it needs: {sorted(expected - granted)}"
        actions = {action for action, _ in granted}
        assert not actions & {"s3:DeleteObject", "s3:PutObjectAcl", "s3:PutBucketPolicy", "dynamodb:Scan"}
        assert ("dynamodb:DeleteItem", _IMAGES_TABLE) not in granted, f"{function_id} must not delete records"


def check_api_never_announces(t: dict[str, Any]) -> None:
    """Announcements come only from the queue side: the API role can neither publish events nor read the webhook
    signing secret, on any resource (a request never publishes an event nor delivers a webhook)."""
    webhook_secret = json.dumps({"Ref": WEBHOOK_SECRET_ID})
    for statement in _permission_statements(t, FUNCTION_ID):
        actions = [str(action) for action in _as_list(statement.get("Action"))]
        resources = [json.dumps(resource) for resource in _as_list(statement.get("Resource"))]
        assert not any(action.startswith("events:") or action == "*" for action in actions), (
            f"the API must not publish events: {statement}"
        )
        reads_secrets = any(action.startswith("secretsmanager:") or action == "*" for action in actions)
        assert not (reads_secrets and (webhook_secret in resources or json.dumps("*") in resources)), (
            f"the API must not read the webhook signing secret: {statement}"
        )


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
        if method == "OPTIONS" or path in ("/openapi.json", "/docs", "/console", "/console/{file}"):
            assert not requires_key, f"{name} ({method} {path}) must not require an API key"
        elif path.startswith("/v1/"):
            assert requires_key, f"{name} ({method} {path}) must require an API key"
            keyed_paths.add(path)
    assert {"/v1/images", "/v1/images/{id}", "/v1/jobs", "/v1/jobs/{id}", "/v1/uploads"} <= keyed_paths, (
        "v1 routes are missing"
    )
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
            shape = {"code", "message", "details", "request_id"}
            assert set(error) == shape, f"{response_type}: not the service's error shape (code, message, details, …)"
            assert error["details"] == [], f"{response_type}: details must be a list (empty: API Gateway names none)"
            assert re.fullmatch(r"[a-z_]+", error["code"]), f"{response_type}: code must be snake_case"
            assert error["request_id"] == "c0ffee"
    # A throttled client is told when to come back (a static header: API Gateway quotes literals with '').
    throttled = ((responses.get("THROTTLED") or {}).get("ResponseParameters") or {}).get("Headers") or {}
    assert re.fullmatch(r"'[1-9][0-9]*'", str(throttled.get("Retry-After"))), "THROTTLED needs Retry-After: '<s>'"


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
    shared = {
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
        "JOBS_QUEUE_URL": {"Ref": QUEUE_ID},
        "JOBS_DLQ_URL": {"Ref": DLQ_ID},
        "EVENT_BUS_NAME": {"Ref": BUS_ID},
        "WEBHOOK_SECRET_ID": {"Ref": WEBHOOK_SECRET_ID},
        "IDEMPOTENCY_TABLE": {"Ref": IDEMPOTENCY_TABLE_ID},
        # The worker marks an item failed on its last delivery: it must count with the queue's own limit.
        "MAX_RECEIVE_COUNT": (_props(t, QUEUE_ID).get("RedrivePolicy") or {}).get("maxReceiveCount"),
    }
    own = {
        FUNCTION_ID: {
            "CORS_ALLOWED_ORIGINS": {"Ref": "CorsAllowedOrigins"},
            "ENABLE_DOCS": {"Ref": "EnableDocs"},
            "ENABLE_CONSOLE": {"Ref": "EnableConsole"},
        },
        WORKER_ID: {"WORKER_THREADS": {"Ref": "WorkerThreads"}},
    }
    for function_id in FUNCTION_IDS:
        env = _function_env(t, function_id)
        for name, value in {**shared, **own[function_id]}.items():
            assert env.get(name) == value, f"{function_id}: {name} should be {value!r}, is {env.get(name)!r}"
        # Development-only switches of the mirror and webhook guards never reach a deployment.
        dev_switches = {
            "IMAGE_ALLOW_HTTP",
            "IMAGE_ALLOWED_PRIVATE_NETWORKS",
            "WEBHOOK_ALLOW_HTTP",
            "WEBHOOK_ALLOWED_PRIVATE_NETWORKS",
        }
        assert not dev_switches & set(env), f"{function_id}: development-only guard switches are deployed"
        assert "POWERTOOLS_TRACE_DISABLED" not in env, "tracing stays on"


def _sqs_queues(t: dict[str, Any]) -> dict[str, dict[str, Any]]:
    queues = _resources_of_type(t, "AWS::SQS::Queue")
    assert {QUEUE_ID, DLQ_ID} <= set(queues), "the jobs queue or its dead-letter queue is missing"
    return queues


def check_jobs_queue_redrive(t: dict[str, Any]) -> None:
    """Failed messages end in the DLQ after >= 5 deliveries; the DLQ keeps them 14 days and takes only JobsQueue."""
    props = _props(t, QUEUE_ID)
    redrive = props.get("RedrivePolicy") or {}
    assert redrive.get("deadLetterTargetArn") == {"Fn::GetAtt": [DLQ_ID, "Arn"]}, "JobsQueue must redrive to the DLQ"
    assert _number_bound(t, redrive.get("maxReceiveCount"), "MinValue") >= 5, (
        "maxReceiveCount below 5 dead-letters healthy messages after a few throttled or interrupted deliveries"
    )
    assert _number_bound(t, redrive.get("maxReceiveCount"), "MaxValue") <= 1000
    dlq = _props(t, DLQ_ID)
    assert "RedrivePolicy" not in dlq, "the dead-letter queue must not redrive further"
    retention, dlq_retention = (
        int(props.get("MessageRetentionPeriod", 345600)),
        int(dlq.get("MessageRetentionPeriod", 0)),
    )
    assert dlq_retention == 14 * 24 * 3600, "the DLQ keeps messages the longest SQS allows (14 days)"
    assert dlq_retention > retention, "a dead-lettered message keeps its enqueue time: the DLQ must outlast JobsQueue"
    allow = dlq.get("RedriveAllowPolicy") or {}
    assert props.get("QueueName") is not None, "JobsQueue needs a known name (the DLQ's RedriveAllowPolicy names it)"
    own_arn = "arn:aws:sqs:ap-southeast-1:123456789012:" + _evaluate(props["QueueName"])
    assert allow.get("redrivePermission") == "byQueue", f"the DLQ must accept dead letters from JobsQueue only: {allow}"
    assert _evaluate(allow.get("sourceQueueArnList")) == [own_arn], (
        f"the DLQ must accept dead letters from JobsQueue only: {allow}"
    )


def check_visibility_covers_worker_timeout(t: dict[str, Any]) -> None:
    """Visibility >= 6 x the worker's timeout (AWS guidance), plus the batching window its messages wait in."""
    timeout = _number_bound(t, _function_setting(t, "Timeout", WORKER_ID), "MaxValue")
    mappings = _sqs_events(t, WORKER_ID)
    assert len(mappings) == 1, "the worker needs exactly one SQS event"
    window = _number_bound(t, mappings[0].get("MaximumBatchingWindowInSeconds", 0), "MaxValue")
    visibility = _number_bound(t, _props(t, QUEUE_ID).get("VisibilityTimeout", 30), "MinValue")
    assert visibility >= 6 * timeout + window, (
        f"JobsQueue VisibilityTimeout {visibility} < 6 x worker Timeout {timeout} + batching window {window}"
    )
    assert visibility <= 43200, "SQS allows at most 12 hours"


def check_queues_encrypted(t: dict[str, Any]) -> None:
    """Every queue is encrypted whether or not KmsKeyArn is set, with the customer key when it is."""
    for queue_id, queue in _sqs_queues(t).items():
        for has_key in (True, False):
            props = _resolve(queue.get("Properties") or {}, {"HasKmsKey": has_key})
            managed = _is_true(props.get("SqsManagedSseEnabled"))
            key = props.get("KmsMasterKeyId")
            assert managed or key, f"{queue_id}: unencrypted when HasKmsKey is {has_key}"
            assert not (managed and key), f"{queue_id}: SSE-SQS and a KMS key exclude each other"
            if has_key:
                assert key == {"Ref": "KmsKeyArn"}, f"{queue_id}: must use the customer key when one is given"


def check_log_groups_encrypted_with_the_customer_key(t: dict[str, Any]) -> None:
    """CloudWatch Logs encrypts every log group at rest; with KmsKeyArn set, each one uses the customer key."""
    groups = _resources_of_type(t, "AWS::Logs::LogGroup")
    assert len(groups) >= 3, "the API, worker and access log groups are declared (retention, encryption)"
    for group_id, group in groups.items():
        props = _resolve(group.get("Properties") or {}, {"HasKmsKey": True})
        assert props.get("KmsKeyId") == {"Ref": "KmsKeyArn"}, f"{group_id}: must use the customer key when given"
        assert props.get("RetentionInDays"), f"{group_id}: logs are kept for a bounded time"


def check_queues_deny_insecure_transport(t: dict[str, Any]) -> None:
    policies = [r.get("Properties") or {} for r in _resources_of_type(t, "AWS::SQS::QueuePolicy").values()]
    for queue_id in _sqs_queues(t):
        statements = [
            statement
            for policy in policies
            if {"Ref": queue_id} in _as_list(policy.get("Queues"))
            for statement in _statements(policy.get("PolicyDocument"))
        ]
        found = [
            s
            for s in statements
            if s.get("Effect") == "Deny"
            and s.get("Principal") in ("*", {"AWS": "*"})
            and set(_as_list(s.get("Action"))) & {"sqs:*", "*"}
            and {"Fn::GetAtt": [queue_id, "Arn"]} in _as_list(s.get("Resource"))
            and str(((s.get("Condition") or {}).get("Bool") or {}).get("aws:SecureTransport")).lower() == "false"
        ]
        assert found, f"{queue_id}: no queue policy denying every request without TLS (aws:SecureTransport false)"


def check_worker_function(t: dict[str, Any]) -> None:
    props = _props(t, WORKER_ID)
    assert props.get("Handler") == "worker_handler.lambda_handler"
    assert props.get("CodeUri") == "functions/worker/"
    assert props.get("Layers") == _props(t, FUNCTION_ID).get("Layers"), "the worker runs on the same two layers"
    assert _function_setting(t, "Runtime", WORKER_ID) == "python3.12"
    assert _function_setting(t, "Architectures", WORKER_ID) == ["arm64"]
    assert _function_setting(t, "Tracing", WORKER_ID) == "Active"
    assert int(_function_setting(t, "MemorySize", WORKER_ID)) == 512
    log_group = (props.get("LoggingConfig") or {}).get("LogGroup")
    assert log_group == {"Ref": "WorkerFunctionLogGroup"}, "the worker must log to its own, retention-bound group"
    assert _props(t, "WorkerFunctionLogGroup").get("RetentionInDays") == {"Ref": "LogRetentionDays"}
    for function_id in _resources_of_type(t, "AWS::Serverless::Function"):
        function = _props(t, function_id)
        assert "DeadLetterQueue" not in function, f"{function_id}: a function DLQ is for async invokes only"
        assert not {"DeadLetterConfig", "EventInvokeConfig"} & set(function), f"{function_id}: async-only settings"
        if _sqs_events(t, function_id):
            assert _own_role(t, function_id), (
                f"{function_id}: for an SQS event SAM attaches AWSLambdaSQSQueueExecutionRole to the role it "
                "generates (receive/delete on every queue, Resource '*'): give the function its own scoped Role"
            )
            assert "Policies" not in function, f"{function_id}: Policies are ignored when the function has a Role"
    mappings = _sqs_events(t, WORKER_ID)
    assert len(mappings) == 1, "the worker needs exactly one SQS event"
    mapping = mappings[0]
    assert mapping.get("Queue") == {"Fn::GetAtt": [QUEUE_ID, "Arn"]}, "the worker must consume JobsQueue"
    assert mapping.get("Enabled", True) is True
    assert "ReportBatchItemFailures" in _as_list(mapping.get("FunctionResponseTypes")), (
        "without partial batch responses one failed item retries (and finally dead-letters) its whole batch"
    )
    concurrency = (mapping.get("ScalingConfig") or {}).get("MaximumConcurrency")
    assert concurrency == {"Ref": "WorkerMaxConcurrency"}, "MaximumConcurrency protects the upstream's rate limit"
    assert _number_bound(t, concurrency, "MinValue") >= 2, "SQS event sources accept 2-1000"
    assert _number_bound(t, concurrency, "MaxValue") <= 1000, "SQS event sources accept 2-1000"
    assert mapping.get("BatchSize") == {"Ref": "WorkerBatchSize"}
    assert _number_bound(t, mapping["BatchSize"], "MaxValue") <= 10, "a batch must finish within the worker's timeout"
    assert mapping.get("MaximumBatchingWindowInSeconds") == {"Ref": "WorkerMaxBatchingWindowSeconds"}


def check_event_bus_and_webhook_secret(t: dict[str, Any]) -> None:
    assert _props(t, BUS_ID).get("Name") == {"Ref": "EventBusName"}
    assert _resource(t, BUS_ID).get("Type") == "AWS::Events::EventBus"
    secret = _props(t, WEBHOOK_SECRET_ID)
    assert _resource(t, WEBHOOK_SECRET_ID).get("Type") == "AWS::SecretsManager::Secret"
    assert "SecretString" not in secret, "the template must never hold the signing key"
    generate = secret.get("GenerateSecretString") or {}
    assert int(generate.get("PasswordLength", 32)) >= 32, "a signing key needs at least 32 characters"
    assert generate.get("ExcludePunctuation") is True
    assert secret.get("KmsKeyId") == {"Fn::If": ["HasKmsKey", {"Ref": "KmsKeyArn"}, NO_VALUE]}, (
        "the signing secret must use the customer key when one is given"
    )


def check_image_requested_events_reach_the_jobs_queue(t: dict[str, Any]) -> None:
    """A rule on the service's bus sends "Image Requested" (never the service's own events) to the jobs queue, and
    the queue lets EventBridge send through that rule only."""
    rules = {
        rule_id: props
        for rule_id, resource in _resources_of_type(t, "AWS::Events::Rule").items()
        if (props := resource.get("Properties") or {}).get("EventBusName") == {"Ref": BUS_ID}
    }
    routing = {
        rule_id: props
        for rule_id, props in rules.items()
        if "Image Requested" in _as_list((props.get("EventPattern") or {}).get("detail-type"))
        and any(target.get("Arn") == {"Fn::GetAtt": [QUEUE_ID, "Arn"]} for target in props.get("Targets") or [])
    }
    assert len(routing) == 1, "exactly one rule must route Image Requested events of EventBus to JobsQueue"
    rule_id, rule = next(iter(routing.items()))
    assert rule.get("State", "ENABLED") == "ENABLED"
    pattern = rule["EventPattern"]
    assert set(pattern.get("detail-type")) == {"Image Requested"}, "only Image Requested belongs on the jobs queue"
    assert {"anything-but": ["flux-image-service"]} in _as_list(pattern.get("source")), (
        "the service's own events (source flux-image-service) must never be fed back to its queue"
    )
    statements = [
        statement
        for resource in _resources_of_type(t, "AWS::SQS::QueuePolicy").values()
        if {"Ref": QUEUE_ID} in _as_list((resource.get("Properties") or {}).get("Queues"))
        for statement in _statements((resource.get("Properties") or {}).get("PolicyDocument"))
        if statement.get("Effect") == "Allow"
    ]
    allowed = [
        s
        for s in statements
        if s.get("Principal") == {"Service": "events.amazonaws.com"}
        and _as_list(s.get("Action")) == ["sqs:SendMessage"]
        and s.get("Resource") == {"Fn::GetAtt": [QUEUE_ID, "Arn"]}
        and ((s.get("Condition") or {}).get("ArnEquals") or {}).get("aws:SourceArn") == {"Fn::GetAtt": [rule_id, "Arn"]}
    ]
    assert allowed, f"{QUEUE_ID}: no statement letting events.amazonaws.com send, conditioned on {rule_id}'s ARN"
    assert len(statements) == len(allowed), f"{QUEUE_ID}: its policy allows more than the Image Requested rule"


def _alarms_on(t: dict[str, Any], namespace: str, metric: str, dimension: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        a["Properties"]
        for a in _resources_of_type(t, "AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("Namespace") == namespace
        and a["Properties"].get("MetricName") == metric
        and a["Properties"].get("Dimensions") == [dimension]
    ]


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
    assert _function_env(t, WORKER_ID).get("POWERTOOLS_SERVICE_NAME") == env.get("POWERTOOLS_SERVICE_NAME"), (
        "the auth alarm watches one service dimension: the worker's auth failures must land in it too"
    )
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
    for function_id in FUNCTION_IDS:
        errors = _alarms_on(t, "AWS/Lambda", "Errors", {"Name": "FunctionName", "Value": {"Ref": function_id}})
        assert errors, f"no alarm on {function_id}'s Errors"
        assert errors[0].get("Threshold") == 1 and errors[0].get("Period") == 300
        assert errors[0].get("ComparisonOperator") == "GreaterThanOrEqualToThreshold"
    dlq = _alarms_on(
        t,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        {"Name": "QueueName", "Value": {"Fn::GetAtt": [DLQ_ID, "QueueName"]}},
    )
    assert dlq, "no alarm on messages in the dead-letter queue"
    assert dlq[0].get("Threshold") == 1 and dlq[0].get("ComparisonOperator") == "GreaterThanOrEqualToThreshold"
    age = _alarms_on(
        t,
        "AWS/SQS",
        "ApproximateAgeOfOldestMessage",
        {"Name": "QueueName", "Value": {"Fn::GetAtt": [QUEUE_ID, "QueueName"]}},
    )
    assert age, "no alarm on the age of the oldest job message"
    assert age[0].get("Threshold") == {"Ref": "JobsOldestMessageAgeThresholdSeconds"}, "threshold is a parameter"
    assert age[0].get("ComparisonOperator") in ("GreaterThanThreshold", "GreaterThanOrEqualToThreshold")
    for logical_id, alarm in alarms.items():
        assert alarm["Properties"].get("TreatMissingData") == "notBreaching"
        for actions in ("AlarmActions", "OKActions"):
            assert alarm["Properties"].get(actions) == OPTIONAL_TOPIC, (
                f"{logical_id}: {actions} must notify AlarmTopicArn when it is set (and nothing otherwise)"
            )


def check_outputs(t: dict[str, Any]) -> None:
    outputs = t.get("Outputs") or {}
    assert {"ApiUrl", "ApiKeyId", "ImagesBucketName", "ImagesTableName", "ApiFunctionName"} <= set(outputs)
    expected = {
        "JobsQueueUrl": {"Ref": QUEUE_ID},
        "JobsQueueArn": {"Fn::GetAtt": [QUEUE_ID, "Arn"]},
        "JobsDeadLetterQueueUrl": {"Ref": DLQ_ID},
        "EventBusName": {"Ref": BUS_ID},
        "WebhookSecretArn": {"Ref": WEBHOOK_SECRET_ID},
        "IdempotencyTableName": {"Ref": IDEMPOTENCY_TABLE_ID},
        "WorkerFunctionName": {"Ref": WORKER_ID},
    }
    for name, value in expected.items():
        assert (outputs.get(name) or {}).get("Value") == value, f"output {name} should be {value!r}"
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


# ------------------------------------------------------------------------------- releases and operations
# CodeDeploy's predefined Lambda configurations (CodeDeployDefault.Lambda<name>), the values SAM accepts as Type.
LAMBDA_DEPLOYMENT_TYPES = {
    "AllAtOnce",
    "Canary10Percent5Minutes",
    "Canary10Percent10Minutes",
    "Canary10Percent15Minutes",
    "Canary10Percent30Minutes",
    "Linear10PercentEvery1Minute",
    "Linear10PercentEvery2Minutes",
    "Linear10PercentEvery3Minutes",
    "Linear10PercentEvery10Minutes",
}
# The alarms each function's deployment must roll back on: what a bad release of that function raises.
ROLLBACK_ALARMS = {
    FUNCTION_ID: {"ApiFunctionErrorsAlarm", "InternalErrorsAlarm"},
    WORKER_ID: {"WorkerErrorsAlarm"},
}
# Alarms that stay raised until someone acts (a full DLQ, an old backlog) or that measure the vendor (the API's 5XX
# rate counts its own 503/504 for an upstream outage): rolling back on them blocks or undoes healthy releases.
STICKY_ALARMS = {"JobsDlqDepthAlarm", "JobsOldestMessageAgeAlarm", "Api5xxErrorRateAlarm"}


def check_safe_releases(t: dict[str, Any]) -> None:
    """Each function publishes a version behind an alias that CodeDeploy shifts, rolling back on its alarms."""
    parameter = (t.get("Parameters") or {}).get("DeploymentType") or {}
    assert parameter.get("Default") == "AllAtOnce", "DeploymentType defaults to AllAtOnce"
    assert set(parameter.get("AllowedValues") or []) <= LAMBDA_DEPLOYMENT_TYPES, "not a Lambda deployment config"
    assert {"AllAtOnce", "Canary10Percent5Minutes", "Linear10PercentEvery1Minute"} <= set(parameter["AllowedValues"])
    for function_id, expected in ROLLBACK_ALARMS.items():
        props = _props(t, function_id)
        assert props.get("AutoPublishAlias") == "live", f"{function_id}: AutoPublishAlias live"
        preference = props.get("DeploymentPreference") or {}
        assert preference.get("Type") == {"Ref": "DeploymentType"}, f"{function_id}: Type must be DeploymentType"
        assert _is_true(preference.get("Enabled", True)), f"{function_id}: deployment preference disabled"
        alarms = {alarm.get("Ref") for alarm in _as_list(preference.get("Alarms") or []) if isinstance(alarm, dict)}
        assert expected <= alarms, f"{function_id}: rollback alarms {sorted(expected - alarms)} missing"
        assert not alarms & STICKY_ALARMS, f"{function_id}: {sorted(alarms & STICKY_ALARMS)} would block releases"
        for alarm in alarms:
            assert _resource(t, alarm).get("Type") == "AWS::CloudWatch::Alarm", f"{alarm} is not an alarm"
        role = preference.get("Role")
        assert role == {"Fn::GetAtt": ["CodeDeployRole", "Arn"]}, f"{function_id}: not the scoped CodeDeploy role"
        # What publishes a version: the function's properties as written, its layers' content, or a new ReleaseId.
        assert props.get("AutoPublishCodeSha256") == {"Ref": "ReleaseId"}, f"{function_id}: ReleaseId names versions"
        assert _is_true(_function_setting(t, "AutoPublishAliasAllProperties", function_id)), (
            f"{function_id}: only a change of its own code would publish a version"
        )
        for layer in _as_list(props.get("Layers") or []):
            publishes = _is_true(_props(t, layer["Ref"]).get("PublishLambdaVersion"))
            assert publishes, f"{layer['Ref']}: a change of the layer would publish nothing"
    assert ((t.get("Parameters") or {}).get("ReleaseId") or {}).get("Default") == "", "ReleaseId defaults to empty"
    statements = list(_statements(_props(t, "CodeDeployRole").get("Policies")))
    actions = {a for s in statements for a in _as_list(s.get("Action"))}
    assert actions == {
        "cloudwatch:DescribeAlarms",
        "lambda:GetAlias",
        "lambda:UpdateAlias",
        "lambda:GetProvisionedConcurrencyConfig",
    }, f"CodeDeployRole grants {sorted(actions)}"
    assert not _props(t, "CodeDeployRole").get("ManagedPolicyArns"), "CodeDeployRole: no managed policy"


def check_snapstart_optional(t: dict[str, Any]) -> None:
    """SnapStart (billed for Python) only when EnableSnapStart=true, and never with what it cannot run with."""
    parameter = (t.get("Parameters") or {}).get("EnableSnapStart") or {}
    assert parameter.get("Default") == "false", "SnapStart costs money for Python: off by default"
    assert t["Conditions"].get("SnapStartEnabled") == {"Fn::Equals": [{"Ref": "EnableSnapStart"}, "true"]}
    for function_id in FUNCTION_IDS:
        snap_start = _function_setting(t, "SnapStart", function_id) or {}
        assert _resolve(snap_start, {"SnapStartEnabled": True}) == {"ApplyOn": "PublishedVersions"}, function_id
        assert _resolve(snap_start, {"SnapStartEnabled": False}) == {"ApplyOn": "None"}, function_id
        assert _props(t, function_id).get("AutoPublishAlias"), f"{function_id}: SnapStart needs published versions"
        # What SnapStart does not support.
        storage = (_function_setting(t, "EphemeralStorage", function_id) or {}).get("Size", 512)
        assert int(storage) <= 512, f"{function_id}: SnapStart allows at most 512 MB of ephemeral storage"
        assert "ProvisionedConcurrencyConfig" not in _props(t, function_id), (
            f"{function_id}: no provisioned concurrency"
        )
        assert "FileSystemConfigs" not in _props(t, function_id), f"{function_id}: no EFS with SnapStart"
        runtime = re.fullmatch(r"python3\.(\d+)", str(_function_setting(t, "Runtime", function_id)))
        assert runtime and int(runtime.group(1)) >= 12, f"{function_id}: SnapStart needs Python 3.12 or later"


def _emitted_metric_names() -> set[str]:
    """The names the code passes to Powertools' add_metric (f"Items{status}" expanded over the item statuses)."""
    names: set[str] = set()
    for path in [*(ROOT / "layers" / "shared").rglob("*.py"), *(ROOT / "functions").rglob("*.py")]:
        source = path.read_text(encoding="utf-8")
        names |= set(re.findall(r'add_metric\(name="([A-Za-z]+)"', source))
        names |= set(re.findall(r'single_metric\(name="([A-Za-z]+)"', source))  # with their own dimensions
        if 'name=f"Items{status.capitalize()}"' in source:
            names |= {f"Items{status.capitalize()}" for status in ("succeeded", "failed", "canceled")}
    return names


def _dashboard_body(t: dict[str, Any]) -> dict[str, Any]:
    dashboards = _resources_of_type(t, "AWS::CloudWatch::Dashboard")
    assert len(dashboards) == 1, "one operations dashboard"
    body = next(iter(dashboards.values()))["Properties"]["DashboardBody"]
    text, variables = (body["Fn::Sub"], {}) if isinstance(body["Fn::Sub"], str) else body["Fn::Sub"]
    names = set(re.findall(r"\$\{([^}!]+)\}", text))
    for name in names:  # every placeholder is a parameter, a pseudo parameter, a resource or a declared variable
        base = name.split(".")[0]
        assert name in variables or base in t["Resources"] or base in t["Parameters"] or name.startswith("AWS::"), name
    numbers = {
        name
        for name, value in variables.items()
        if isinstance(value, dict) and t["Parameters"].get(value.get("Ref"), {}).get("Type") == "Number"
    }  # substituted bare (a JSON number); every other placeholder sits inside a JSON string
    filled = re.sub(r"\$\{([^}!]+)\}", lambda m: "1" if m.group(1) in numbers else m.group(1), text)
    try:
        return json.loads(filled)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"the dashboard body is not JSON once substituted: {exc}") from exc


def check_operations_dashboard(t: dict[str, Any]) -> None:
    """The dashboard shows the API, both functions, the service's own metrics (as emitted) and the queues."""
    body = _dashboard_body(t)
    env = _function_env(t)
    namespace, service = env.get("POWERTOOLS_METRICS_NAMESPACE"), env.get("POWERTOOLS_SERVICE_NAME")
    shown: set[tuple[str, str, str]] = set()  # (namespace, metric, what it is about)
    stats: set[tuple[str, str]] = set()
    for widget in body.get("widgets") or []:
        properties = widget.get("properties") or {}
        for metric in properties.get("metrics") or []:
            names = [part for part in metric if isinstance(part, str)]
            options = next((part for part in metric if isinstance(part, dict)), {})
            if not names:  # a SEARCH expression: the metrics it finds must be emitted, in the service's namespace
                expression = str(options.get("expression") or "")
                searched = re.findall(r'MetricName=\\?"([A-Za-z]+)', expression)
                assert searched and expression.startswith(f"SEARCH('{{{namespace},"), f"unexpected {expression}"
                shown.update((namespace, name, "search") for name in searched)
                continue
            ns, name, dimensions = names[0], names[1], dict(zip(names[2::2], names[3::2], strict=True))
            if ns == namespace:
                assert dimensions == {"service": service}, f"{name}: not the dimension Powertools writes ({service})"
            shown.add((ns, name, next(iter(dimensions.values()), "")))
            stats.add((name, str(options.get("stat") or properties.get("stat"))))
    emitted = _emitted_metric_names()
    own = {name for ns, name, _ in shown if ns == namespace}
    assert own <= emitted, f"the dashboard shows metrics the code never emits: {sorted(own - emitted)}"
    assert {
        "UpstreamLatency",
        "UpstreamAuthFailures",
        "ImagesGenerated",
        "JobsSubmitted",
        "ItemsSucceeded",
        "ItemsFailed",
    } <= own, "service metrics missing"
    variables = next(iter(_resources_of_type(t, "AWS::CloudWatch::Dashboard").values()))["Properties"]
    variables = variables["DashboardBody"]["Fn::Sub"][1]
    assert variables.get("ApiName") == _props(t, API_ID).get("Name"), "the dashboard watches another API name"
    for metric in ("Count", "4XXError", "5XXError", "Latency"):
        assert ("AWS/ApiGateway", metric, "ApiName") in shown, f"API {metric} missing"
    assert {("Latency", "p50"), ("Latency", "p90"), ("Latency", "p99")} <= stats, "API latency p50/p90/p99"
    for function_id in FUNCTION_IDS:
        for metric in ("Duration", "Errors", "Throttles", "ConcurrentExecutions"):
            assert ("AWS/Lambda", metric, function_id) in shown, f"{function_id} {metric} missing"
    for queue, metric in (
        (f"{QUEUE_ID}.QueueName", "ApproximateNumberOfMessagesVisible"),
        (f"{QUEUE_ID}.QueueName", "ApproximateAgeOfOldestMessage"),
        (f"{DLQ_ID}.QueueName", "ApproximateNumberOfMessagesVisible"),
    ):
        assert ("AWS/SQS", metric, queue) in shown, f"{metric} of {queue} missing"
    url = _evaluate(
        {"Fn::Sub": [t["Outputs"]["DashboardUrl"]["Value"]["Fn::Sub"][0], {"Host": "console.amazonaws.cn"}]},
        {**PSEUDO_PARAMETERS, "AWS::Region": "cn-north-1", "OperationsDashboard": "d"},
    )
    assert url == "https://cn-north-1.console.amazonaws.cn/cloudwatch/home?region=cn-north-1#dashboards/dashboard/d"
    host = t["Outputs"]["DashboardUrl"]["Value"]["Fn::Sub"][1]["Host"]
    assert host == {"Fn::FindInMap": ["Console", {"Ref": "AWS::Partition"}, "Host"]}, "the console host per partition"
    assert t["Mappings"]["Console"]["aws"]["Host"] == "console.aws.amazon.com"
    assert t["Mappings"]["Console"]["aws-cn"]["Host"] == "console.amazonaws.cn"


def check_waf_optional(t: dict[str, Any]) -> None:
    """EnableWaf puts managed rules and a per-IP rate limit in front of the prod stage, once that exists."""
    assert (t["Parameters"].get("EnableWaf") or {}).get("Default") == "false"
    acl = _resource(t, "WebAcl")
    association = _resource(t, "WebAclAssociation")
    assert acl.get("Condition") == "WafEnabled" and association.get("Condition") == "WafEnabled"
    props = acl["Properties"]
    assert props.get("Scope") == "REGIONAL" and props.get("DefaultAction") == {"Allow": {}}
    rules = {rule["Name"]: rule for rule in props.get("Rules") or []}
    managed = {
        (rule["Statement"].get("ManagedRuleGroupStatement") or {}).get("Name"): rule
        for rule in rules.values()
        if "ManagedRuleGroupStatement" in rule["Statement"]
    }
    assert {"AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet"} <= set(managed)
    for rule in managed.values():
        assert rule.get("OverrideAction") == {"None": {}}, f"{rule['Name']}: managed rules must block, not count"
        overrides = rule["Statement"]["ManagedRuleGroupStatement"].get("RuleActionOverrides") or []
        counted = {o["Name"] for o in overrides if o.get("ActionToUse") == {"Count": {}}}
        assert counted <= {"SizeRestrictions_BODY"}, f"{rule['Name']}: only the 8 KB body rule may count: {counted}"
    common = managed["AWSManagedRulesCommonRuleSet"]["Statement"]["ManagedRuleGroupStatement"]
    assert {"Name": "SizeRestrictions_BODY", "ActionToUse": {"Count": {}}} in (
        common.get("RuleActionOverrides") or []
    ), "POST /v1/jobs bodies exceed 8 KB: SizeRestrictions_BODY must count, not block"
    rate = [r for r in rules.values() if "RateBasedStatement" in r["Statement"]]
    assert rate, "no rate-based rule"
    assert rate[0]["Statement"]["RateBasedStatement"] == {
        "Limit": {"Ref": "WafRateLimitPer5Min"},
        "AggregateKeyType": "IP",
    }
    assert rate[0].get("Action") == {"Block": {}}
    assert int(t["Parameters"]["WafRateLimitPer5Min"]["MinValue"]) >= 10, "WAF's smallest rate limit is 10"
    for rule in [props, *rules.values()]:
        visibility = rule.get("VisibilityConfig") or {}
        assert visibility.get("CloudWatchMetricsEnabled") is True and visibility.get("MetricName"), "metrics per rule"
    arn = association["Properties"].get("ResourceArn")
    stage = "${" + API_ID + ".Stage}"  # SAM's reference to the generated stage: a dependency, and its name
    assert arn == {
        "Fn::Sub": "arn:${AWS::Partition}:apigateway:${AWS::Region}::/restapis/${" + API_ID + "}/stages/" + stage
    } or (f"{API_ID}prodStage" in _as_list(association.get("DependsOn") or [])), (
        f"the association must name the stage and wait for it: {arn}"
    )
    assert association["Properties"].get("WebACLArn") == {"Fn::GetAtt": ["WebAcl", "Arn"]}


def check_api_gateway_logging_role(t: dict[str, Any]) -> None:
    """A fresh Region needs the account's API Gateway logging role before a stage with access logs deploys."""
    assert (t["Parameters"]["CreateApiGatewayLoggingRole"]).get("Default") == "true", "a first deploy would fail"
    assert _props(t, API_ID).get("AccessLogSetting"), "access logs are why the role is needed"
    trust = _props(t, "ApiGatewayLoggingRole")["AssumeRolePolicyDocument"]["Statement"]
    # The trust policy AWS documents for this role, with nothing added.
    assert trust == [
        {"Effect": "Allow", "Principal": {"Service": "apigateway.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ], f"ApiGatewayLoggingRole trust policy: {trust}"
    assert _props(t, "ApiGatewayAccount").get("CloudWatchRoleArn") == {"Fn::GetAtt": ["ApiGatewayLoggingRole", "Arn"]}


# Length limits of names the template builds (SQS queue names are checked on their own, with their pattern).
NAME_LIMITS: dict[str, dict[str, int]] = {
    "AWS::Serverless::LayerVersion": {"LayerName": 140},
    "AWS::CloudWatch::Dashboard": {"DashboardName": 255},
    "AWS::WAFv2::WebACL": {"Name": 128, "Description": 256},
    "AWS::SecretsManager::Secret": {"Description": 2048},
}


def _moderation_policies(t: dict[str, Any], function_id: str) -> list[Any]:
    """The function's policies (its own role's, or its SAM Policies) that grant a bedrock action."""
    role_id = _own_role(t, function_id)
    policies = _as_list(_props(t, role_id or function_id).get("Policies") or [])
    return [policy for policy in policies if "bedrock:" in json.dumps(policy)]


def check_moderation_optional_and_scoped(t: dict[str, Any]) -> None:
    """Content moderation is off unless a deployment chooses it; when on, the guardrail and the permission to
    apply it exist, scoped to that one guardrail; when off, neither does."""
    mode = t["Parameters"]["ModerationMode"]
    assert mode.get("Default") == "off", "moderation must be off by default (chosen per deployment)"
    assert set(mode.get("AllowedValues") or []) == {"off", "prompt", "image", "both"}
    assert t["Conditions"]["ModerationEnabled"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ModerationMode"}, "off"]}]}
    for logical_id in ("ModerationGuardrail", "ModerationGuardrailVersion"):
        assert _res(t, logical_id).get("Condition") == "ModerationEnabled", f"{logical_id} only when enabled"
    filters = _props(t, "ModerationGuardrail")["ContentPolicyConfig"]["FiltersConfig"]
    assert any("IMAGE" in (f.get("OutputModalities") or []) for f in filters), "the guardrail must screen images"
    assert _function_env(t).get("MODERATION_MODE") == {"Ref": "ModerationMode"}
    for function_id in FUNCTION_IDS:
        policies = _moderation_policies(t, function_id)
        assert policies, f"{function_id}: no permission to apply the guardrail"
        for policy in policies:
            assert isinstance(policy, dict) and set(policy) == {"Fn::If"}, f"{function_id}: {policy}"
            condition, _, when_off = policy["Fn::If"]
            assert condition == "ModerationEnabled" and when_off == {"Ref": "AWS::NoValue"}, (
                f"{function_id}: bedrock permissions must exist only when moderation is enabled"
            )
        for statement in _permission_statements(t, function_id):
            if any(str(a).startswith("bedrock:") or a == "*" for a in _as_list(statement.get("Action"))):
                assert _as_list(statement["Action"]) == ["bedrock:ApplyGuardrail"], statement
                assert statement["Resource"] == {"Fn::GetAtt": ["ModerationGuardrail", "GuardrailArn"]}, statement
    dashboard = json.dumps(_props(t, "OperationsDashboard")["DashboardBody"])
    assert "ContentBlocked" in dashboard and "category" in dashboard, "a dashboard widget shows blocks by category"


def check_parameters_deployable(t: dict[str, Any]) -> None:
    """Values the parameters accept must deploy: no "default" bus, no over-reservation, any stack name."""
    bus = t["Parameters"]["EventBusName"]
    assert not re.fullmatch(bus["AllowedPattern"], "default"), "EventBusName accepts 'default' (cannot be created)"
    for name in ("flux-image-service", "default-bus", "my.default", "x" * 256):
        assert re.fullmatch(bus["AllowedPattern"], name), f"EventBusName refuses {name!r}"
    assert int(t["Parameters"]["ReservedConcurrency"]["MaxValue"]) <= 900, (
        "Lambda keeps 100 of the default 1000 unreserved: ReservedConcurrency above 900 fails to deploy"
    )
    name = _evaluate(_props(t, QUEUE_ID).get("QueueName"))
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,80}", name), f"queue name {name!r} ({len(name)} chars) with a 128-char stack"
    # Every other name built from the stack name must fit too (CloudFormation's stack names stop at 128).
    for logical_id, resource in t["Resources"].items():
        props = resource.get("Properties") or {}
        limits = NAME_LIMITS.get(resource.get("Type"), {})
        named = [(key, props.get(key), limit) for key, limit in limits.items() if key in props]
        if resource.get("Type") == "AWS::WAFv2::WebACL":
            visibility = [
                props.get("VisibilityConfig") or {},
                *(r.get("VisibilityConfig") or {} for r in props["Rules"]),
            ]
            named += [("MetricName", v.get("MetricName"), 128) for v in visibility]
        for key, value, limit in named:
            if "AWS::StackName" in json.dumps(value):
                evaluated = _evaluate(value)
                assert len(evaluated) <= limit, f"{logical_id}.{key} is {len(evaluated)} chars with a 128-char stack"


CHECKS: list[Callable[[dict[str, Any]], None]] = [
    check_bucket_private,
    check_bucket_encrypted,
    check_bucket_denies_insecure_transport,
    check_bucket_denies_old_tls,
    check_lifecycle_bound_to_retention,
    check_stateful_resources_retained,
    check_table,
    check_idempotency_table,
    check_no_wildcard_permissions,
    check_function_data_access_scoped,
    check_api_never_announces,
    check_api_keys_on_v1_routes_only,
    check_gateway_responses,
    check_function_runtime,
    check_function_environment,
    check_jobs_queue_redrive,
    check_visibility_covers_worker_timeout,
    check_queues_encrypted,
    check_log_groups_encrypted_with_the_customer_key,
    check_queues_deny_insecure_transport,
    check_worker_function,
    check_event_bus_and_webhook_secret,
    check_image_requested_events_reach_the_jobs_queue,
    check_alarms,
    check_outputs,
    check_parameters_constrained,
    check_checkov_skips_justified,
    check_safe_releases,
    check_snapstart_optional,
    check_operations_dashboard,
    check_waf_optional,
    check_api_gateway_logging_role,
    check_parameters_deployable,
    check_moderation_optional_and_scoped,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
def test_template_structure(
    template: dict[str, Any], check: Callable[[dict[str, Any]], None], reliability: Any
) -> None:
    reliability.record("Template security", check.__name__.removeprefix("check_").replace("_", " "), "holds")
    check(template)


# ------------------------------------------------------------------- the checks fail without the protection
def _res(t: dict[str, Any], logical_id: str) -> dict[str, Any]:
    return t["Resources"][logical_id]


def _p(t: dict[str, Any], logical_id: str) -> dict[str, Any]:
    return t["Resources"][logical_id]["Properties"]


def _bucket_statement(t: dict[str, Any], sid: str) -> dict[str, Any]:
    return next(s for s in _p(t, "ImagesBucketPolicy")["PolicyDocument"]["Statement"] if s.get("Sid") == sid)


def _function_statement(t: dict[str, Any], sid: str, function_id: str = FUNCTION_ID) -> dict[str, Any]:
    return next(s for s in _statements(_p(t, function_id)["Policies"]) if s.get("Sid") == sid)


def _worker_statement(t: dict[str, Any], sid: str) -> dict[str, Any]:
    return next(s for s in _permission_statements(t, WORKER_ID) if s.get("Sid") == sid)


def _queue_statement(t: dict[str, Any], sid: str) -> dict[str, Any]:
    return next(s for s in _p(t, "JobsQueuePolicy")["PolicyDocument"]["Statement"] if s.get("Sid") == sid)


def _mapping(t: dict[str, Any]) -> dict[str, Any]:
    return _p(t, WORKER_ID)["Events"]["Jobs"]["Properties"]


def _global_env(t: dict[str, Any]) -> dict[str, Any]:
    return t["Globals"]["Function"]["Environment"]["Variables"]


def _event(t: dict[str, Any], name: str) -> dict[str, Any]:
    return _p(t, FUNCTION_ID)["Events"][name]["Properties"]


def _rule(t: dict[str, Any], rule_id: str) -> dict[str, Any]:
    return next(r for r in _p(t, BUCKET_ID)["LifecycleConfiguration"]["Rules"] if r.get("Id") == rule_id)


MUTATIONS: dict[str, tuple[Callable[[dict[str, Any]], None], Callable[[dict[str, Any]], Any]]] = {
    "moderation-on-by-default": (
        check_moderation_optional_and_scoped,
        lambda t: t["Parameters"]["ModerationMode"].update(Default="both"),
    ),
    "guardrail-without-condition": (
        check_moderation_optional_and_scoped,
        lambda t: _res(t, "ModerationGuardrail").pop("Condition"),
    ),
    "moderation-grant-on-any-guardrail": (
        check_moderation_optional_and_scoped,
        lambda t: _moderation_policies(t, WORKER_ID)[0]["Fn::If"][1]["PolicyDocument"]["Statement"][0].update(
            Resource="*"
        ),
    ),
    "moderation-grant-unconditional": (
        check_moderation_optional_and_scoped,
        lambda t: _p(t, FUNCTION_ID)["Policies"].__setitem__(-1, _moderation_policies(t, FUNCTION_ID)[0]["Fn::If"][1]),
    ),
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
    "bucket-ignores-customer-key": (
        check_bucket_encrypted,
        lambda t: _p(t, BUCKET_ID)["BucketEncryption"]["ServerSideEncryptionConfiguration"][0].update(
            ServerSideEncryptionByDefault={"SSEAlgorithm": "AES256"}
        ),
    ),
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
    "table-ignores-customer-key": (
        check_table,
        lambda t: _p(t, TABLE_ID).update(SSESpecification={"SSEEnabled": True}),
    ),
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
    "gateway-body-without-details": (
        check_gateway_responses,
        lambda t: _p(t, API_ID)["GatewayResponses"]["INTEGRATION_TIMEOUT"].update(
            ResponseTemplates={
                "application/json": '{"error": {"code": "gateway_timeout", "message": $context.error.messageString, '
                '"request_id": "$context.requestId"}}'
            }
        ),
    ),
    "timeout-over-29": (check_function_runtime, lambda t: _p(t, FUNCTION_ID).update(Timeout=60)),
    "tracing-off": (check_function_runtime, lambda t: t["Globals"]["Function"].update(Tracing="PassThrough")),
    "env-var-missing": (check_function_environment, lambda t: _global_env(t).pop("FLUX_SECRET_ID")),
    "worker-env-overrides-queue": (
        check_function_environment,
        lambda t: _p(t, WORKER_ID)["Environment"]["Variables"].update(JOBS_QUEUE_URL="https://sqs.invalid/other"),
    ),
    "worker-threads-missing": (
        check_function_environment,
        lambda t: _p(t, WORKER_ID)["Environment"]["Variables"].pop("WORKER_THREADS"),
    ),
    "max-receive-count-diverges": (check_function_environment, lambda t: _global_env(t).update(MAX_RECEIVE_COUNT="3")),
    "webhook-dev-switch-deployed": (
        check_function_environment,
        lambda t: _p(t, WORKER_ID)["Environment"]["Variables"].update(WEBHOOK_ALLOWED_PRIVATE_NETWORKS="10.0.0.0/8"),
    ),
    "dev-switch-deployed": (
        check_function_environment,
        lambda t: _p(t, FUNCTION_ID)["Environment"]["Variables"].update(IMAGE_ALLOWED_PRIVATE_NETWORKS="0.0.0.0/0"),
    ),
    # ---- the asynchronous path
    "idempotency-table-deletable": (
        check_stateful_resources_retained,
        lambda t: _res(t, IDEMPOTENCY_TABLE_ID).pop("DeletionPolicy"),
    ),
    "idempotency-ttl-removed": (
        check_idempotency_table,
        lambda t: _p(t, IDEMPOTENCY_TABLE_ID).pop("TimeToLiveSpecification"),
    ),
    "idempotency-sse-off": (
        check_idempotency_table,
        lambda t: _p(t, IDEMPOTENCY_TABLE_ID).update(SSESpecification={"SSEEnabled": False}),
    ),
    "idempotency-pitr-off": (
        check_idempotency_table,
        lambda t: _p(t, IDEMPOTENCY_TABLE_ID).pop("PointInTimeRecoverySpecification"),
    ),
    "redrive-removed": (check_jobs_queue_redrive, lambda t: _p(t, QUEUE_ID).pop("RedrivePolicy")),
    "redrive-count-param-allows-1": (
        check_jobs_queue_redrive,
        lambda t: t["Parameters"]["JobMaxReceiveCount"].update(MinValue=1),
    ),
    "redrive-count-literal-3": (
        check_jobs_queue_redrive,
        lambda t: _p(t, QUEUE_ID)["RedrivePolicy"].update(maxReceiveCount=3),
    ),
    "dlq-retention-default": (check_jobs_queue_redrive, lambda t: _p(t, DLQ_ID).pop("MessageRetentionPeriod")),
    "dlq-accepts-any-source": (
        check_jobs_queue_redrive,
        lambda t: _p(t, DLQ_ID).update(RedriveAllowPolicy={"redrivePermission": "allowAll"}),
    ),
    "visibility-below-6x": (
        check_visibility_covers_worker_timeout,
        lambda t: _p(t, QUEUE_ID).update(VisibilityTimeout=720),
    ),
    "visibility-default": (check_visibility_covers_worker_timeout, lambda t: _p(t, QUEUE_ID).pop("VisibilityTimeout")),
    "worker-timeout-raised": (check_visibility_covers_worker_timeout, lambda t: _p(t, WORKER_ID).update(Timeout=300)),
    "batching-window-unbounded": (
        check_visibility_covers_worker_timeout,
        lambda t: t["Parameters"]["WorkerMaxBatchingWindowSeconds"].update(MaxValue=300),
    ),
    "queue-unencrypted": (check_queues_encrypted, lambda t: _p(t, QUEUE_ID).pop("SqsManagedSseEnabled")),
    "log-group-ignores-customer-key": (
        check_log_groups_encrypted_with_the_customer_key,
        lambda t: next(iter(_resources_of_type(t, "AWS::Logs::LogGroup").values()))["Properties"].pop("KmsKeyId"),
    ),
    "access-log-group-ignores-customer-key": (
        check_log_groups_encrypted_with_the_customer_key,
        lambda t: _p(t, "ApiAccessLogGroup").pop("KmsKeyId"),
    ),
    "worker-log-group-ignores-customer-key": (
        check_log_groups_encrypted_with_the_customer_key,
        lambda t: _p(t, "WorkerFunctionLogGroup").update(KmsKeyId={"Ref": "AWS::NoValue"}),
    ),
    "dlq-ignores-customer-key": (check_queues_encrypted, lambda t: _p(t, DLQ_ID).pop("KmsMasterKeyId")),
    "queue-sse-off-with-key": (
        check_queues_encrypted,
        lambda t: _p(t, QUEUE_ID).update(SqsManagedSseEnabled=False, KmsMasterKeyId=NO_VALUE),
    ),
    "queue-tls-deny-removed": (
        check_queues_deny_insecure_transport,
        lambda t: _p(t, "JobsQueuePolicy")["PolicyDocument"].update(Statement=[]),
    ),
    "dlq-policy-removed": (
        check_queues_deny_insecure_transport,
        lambda t: t["Resources"].pop("JobsDeadLetterQueuePolicy"),
    ),
    "queue-tls-deny-turned-allow": (
        check_queues_deny_insecure_transport,
        lambda t: _p(t, "JobsQueuePolicy")["PolicyDocument"]["Statement"][0].update(Effect="Allow"),
    ),
    "queue-tls-deny-on-other-queue": (
        check_queues_deny_insecure_transport,
        lambda t: _p(t, "JobsQueuePolicy")["PolicyDocument"]["Statement"][0].update(
            Resource={"Fn::GetAtt": [DLQ_ID, "Arn"]}
        ),
    ),
    "worker-function-dlq": (
        check_worker_function,
        lambda t: _p(t, WORKER_ID).update(
            DeadLetterQueue={"Type": "SQS", "TargetArn": {"Fn::GetAtt": [DLQ_ID, "Arn"]}}
        ),
    ),
    "worker-generated-role": (check_worker_function, lambda t: _p(t, WORKER_ID).pop("Role")),
    "worker-sqs-event-removed": (check_worker_function, lambda t: _p(t, WORKER_ID).pop("Events")),
    "partial-batch-responses-off": (check_worker_function, lambda t: _mapping(t).pop("FunctionResponseTypes")),
    "max-concurrency-removed": (check_worker_function, lambda t: _mapping(t).pop("ScalingConfig")),
    "max-concurrency-unbounded": (
        check_worker_function,
        lambda t: t["Parameters"]["WorkerMaxConcurrency"].pop("MaxValue"),
    ),
    "mapping-on-dlq": (check_worker_function, lambda t: _mapping(t).update(Queue={"Fn::GetAtt": [DLQ_ID, "Arn"]})),
    "worker-default-log-group": (check_worker_function, lambda t: _p(t, WORKER_ID)["LoggingConfig"].pop("LogGroup")),
    "webhook-secret-in-template": (
        check_event_bus_and_webhook_secret,
        lambda t: _p(t, WEBHOOK_SECRET_ID).update(SecretString="not-so-secret"),
    ),
    "webhook-secret-short": (
        check_event_bus_and_webhook_secret,
        lambda t: _p(t, WEBHOOK_SECRET_ID)["GenerateSecretString"].update(PasswordLength=16),
    ),
    "webhook-secret-ignores-customer-key": (
        check_event_bus_and_webhook_secret,
        lambda t: _p(t, WEBHOOK_SECRET_ID).pop("KmsKeyId"),
    ),
    "worker-sqs-star": (
        check_no_wildcard_permissions,
        lambda t: _worker_statement(t, "ConsumeJobs").update(Action="sqs:*"),
    ),
    "worker-events-on-any-bus": (
        check_no_wildcard_permissions,
        lambda t: _worker_statement(t, "PublishJobEvents").update(Resource="*"),
    ),
    "sqs-execution-role-attached": (
        check_no_wildcard_permissions,
        lambda t: _p(t, "WorkerFunctionRole").update(
            ManagedPolicyArns=[
                {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole"}
            ]
        ),
    ),
    "worker-logs-anywhere": (
        check_function_data_access_scoped,
        lambda t: _worker_statement(t, "WriteOwnLogs").update(Resource="*"),
    ),
    "worker-receives-from-dlq": (
        check_function_data_access_scoped,
        lambda t: _worker_statement(t, "ConsumeJobs").update(
            Resource=[{"Fn::GetAtt": [QUEUE_ID, "Arn"]}, {"Fn::GetAtt": [DLQ_ID, "Arn"]}]
        ),
    ),
    "worker-lost-change-visibility": (
        check_function_data_access_scoped,
        lambda t: _worker_statement(t, "ConsumeJobs")["Action"].remove("sqs:ChangeMessageVisibility"),
    ),
    "worker-uses-idempotency-table": (
        check_function_data_access_scoped,
        lambda t: _worker_statement(t, "ImageRecords").update(
            Resource=[{"Fn::GetAtt": [TABLE_ID, "Arn"]}, {"Fn::GetAtt": [IDEMPOTENCY_TABLE_ID, "Arn"]}]
        ),
    ),
    "api-deletes-image-records": (
        check_function_data_access_scoped,
        lambda t: _function_statement(t, "ImageRecords")["Action"].append("dynamodb:DeleteItem"),
    ),
    "api-sends-to-dlq": (
        check_function_data_access_scoped,
        lambda t: _function_statement(t, "EnqueueJobs").update(Resource={"Fn::GetAtt": [DLQ_ID, "Arn"]}),
    ),
    "api-publishes-events": (
        check_api_never_announces,
        lambda t: _p(t, FUNCTION_ID)["Policies"][0]["Statement"].append(
            {
                "Sid": "PublishJobEvents",
                "Effect": "Allow",
                "Action": "events:PutEvents",
                "Resource": {"Fn::GetAtt": [BUS_ID, "Arn"]},
            }
        ),
    ),
    "api-reads-webhook-secret": (
        check_api_never_announces,
        lambda t: _p(t, FUNCTION_ID)["Policies"][0]["Statement"].append(
            {
                "Sid": "ReadWebhookSecret",
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": {"Ref": WEBHOOK_SECRET_ID},
            }
        ),
    ),
    "api-lost-enqueue": (
        check_function_data_access_scoped,
        lambda t: _p(t, FUNCTION_ID)["Policies"][0]["Statement"].remove(_function_statement(t, "EnqueueJobs")),
    ),
    "worker-kms-not-via-sqs": (
        check_function_data_access_scoped,
        lambda t: _worker_statement(t, "UseCustomerKeyThroughDataServices")["Condition"]["StringEquals"][
            "kms:ViaService"
        ].pop(),
    ),
    "key-dropped-on-cancel": (check_api_keys_on_v1_routes_only, lambda t: _event(t, "CancelJob").pop("Auth")),
    "preflight-for-jobs-removed": (
        check_api_keys_on_v1_routes_only,
        lambda t: _p(t, FUNCTION_ID)["Events"].pop("PreflightJob"),
    ),
    "dlq-alarm-watches-jobs-queue": (
        check_alarms,
        lambda t: _p(t, "JobsDlqDepthAlarm").update(
            Dimensions=[{"Name": "QueueName", "Value": {"Fn::GetAtt": [QUEUE_ID, "QueueName"]}}]
        ),
    ),
    "age-alarm-hardcoded": (check_alarms, lambda t: _p(t, "JobsOldestMessageAgeAlarm").update(Threshold=900)),
    "worker-errors-alarm-removed": (check_alarms, lambda t: t["Resources"].pop("WorkerErrorsAlarm")),
    "alarm-topic-unwired": (check_alarms, lambda t: _p(t, "JobsDlqDepthAlarm").pop("AlarmActions")),
    "ok-topic-unwired": (check_alarms, lambda t: _p(t, "WorkerErrorsAlarm").update(OKActions=[])),
    "worker-metrics-under-other-service": (
        check_alarms,
        lambda t: _p(t, WORKER_ID)["Environment"]["Variables"].update(POWERTOOLS_SERVICE_NAME="image-worker"),
    ),
    "webhook-secret-output-removed": (check_outputs, lambda t: t["Outputs"].pop("WebhookSecretArn")),
    "queue-url-output-wrong": (
        check_outputs,
        lambda t: t["Outputs"]["JobsQueueUrl"].update(Value={"Ref": DLQ_ID}),
    ),
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
    # ---- releases, operations, deploy-time defects
    "api-alias-removed": (check_safe_releases, lambda t: _p(t, FUNCTION_ID).pop("AutoPublishAlias")),
    "worker-deployment-preference-removed": (
        check_safe_releases,
        lambda t: _p(t, WORKER_ID).pop("DeploymentPreference"),
    ),
    "deployment-type-hardcoded": (
        check_safe_releases,
        lambda t: _p(t, FUNCTION_ID)["DeploymentPreference"].update(Type="Canary10Percent5Minutes"),
    ),
    "deployment-type-not-for-lambda": (
        check_safe_releases,
        lambda t: t["Parameters"]["DeploymentType"]["AllowedValues"].append("HalfAtATime"),
    ),
    "rollback-ignores-internal-errors": (
        check_safe_releases,
        lambda t: _p(t, FUNCTION_ID)["DeploymentPreference"]["Alarms"].remove({"Ref": "InternalErrorsAlarm"}),
    ),
    "rollback-on-upstream-5xx-rate": (
        check_safe_releases,
        lambda t: _p(t, FUNCTION_ID)["DeploymentPreference"]["Alarms"].append({"Ref": "Api5xxErrorRateAlarm"}),
    ),
    "versions-ignore-layer-changes": (
        check_safe_releases,
        lambda t: _p(t, "SharedLayer").pop("PublishLambdaVersion"),
    ),
    "versions-hash-code-only": (
        check_safe_releases,
        lambda t: _p(t, WORKER_ID).pop("AutoPublishAliasAllProperties"),
    ),
    "rollback-on-dlq-depth": (
        check_safe_releases,
        lambda t: _p(t, WORKER_ID)["DeploymentPreference"]["Alarms"].append({"Ref": "JobsDlqDepthAlarm"}),
    ),
    "codedeploy-generated-role": (
        check_safe_releases,
        lambda t: _p(t, FUNCTION_ID)["DeploymentPreference"].pop("Role"),
    ),
    "codedeploy-role-invokes": (
        check_safe_releases,
        lambda t: next(
            s for s in _statements(_p(t, "CodeDeployRole")["Policies"]) if s.get("Sid") == "ShiftLiveAliases"
        )["Action"].append("lambda:InvokeFunction"),
    ),
    "snapstart-on-by-default": (
        check_snapstart_optional,
        lambda t: t["Parameters"]["EnableSnapStart"].update(Default="true"),
    ),
    "snapstart-unconditional": (
        check_snapstart_optional,
        lambda t: t["Globals"]["Function"].update(SnapStart={"ApplyOn": "PublishedVersions"}),
    ),
    "snapstart-on-python-3-9": (check_snapstart_optional, lambda t: _p(t, WORKER_ID).update(Runtime="python3.9")),
    "snapstart-with-big-ephemeral-storage": (
        check_snapstart_optional,
        lambda t: _p(t, WORKER_ID).update(EphemeralStorage={"Size": 1024}),
    ),
    "dashboard-metric-never-emitted": (
        check_operations_dashboard,
        lambda t: _p(t, "OperationsDashboard")["DashboardBody"]["Fn::Sub"].__setitem__(
            0, _p(t, "OperationsDashboard")["DashboardBody"]["Fn::Sub"][0].replace('"ItemsFailed"', '"ItemFailures"')
        ),
    ),
    "dashboard-other-service-dimension": (
        check_operations_dashboard,
        lambda t: _p(t, "OperationsDashboard")["DashboardBody"]["Fn::Sub"].__setitem__(
            0, _p(t, "OperationsDashboard")["DashboardBody"]["Fn::Sub"][0].replace('"image-api"', '"image-worker"', 1)
        ),
    ),
    "dashboard-without-dlq": (
        check_operations_dashboard,
        lambda t: _p(t, "OperationsDashboard")["DashboardBody"]["Fn::Sub"].__setitem__(
            0, _p(t, "OperationsDashboard")["DashboardBody"]["Fn::Sub"][0].replace("JobsDeadLetterQueue.", "JobsQueue.")
        ),
    ),
    "dashboard-body-not-json": (
        check_operations_dashboard,
        lambda t: _p(t, "OperationsDashboard")["DashboardBody"]["Fn::Sub"].__setitem__(
            0, _p(t, "OperationsDashboard")["DashboardBody"]["Fn::Sub"][0].replace("]}}", "]}", 1)
        ),
    ),
    "dashboard-url-commercial-console-only": (
        check_operations_dashboard,
        lambda t: t["Outputs"]["DashboardUrl"].update(
            Value={
                "Fn::Sub": "https://${AWS::Region}.console.aws.amazon.com/cloudwatch/home?region=${AWS::Region}"
                "#dashboards/dashboard/${OperationsDashboard}"
            }
        ),
    ),
    "waf-rate-rule-removed": (
        check_waf_optional,
        lambda t: _p(t, "WebAcl")["Rules"].remove(
            next(r for r in _p(t, "WebAcl")["Rules"] if "RateBasedStatement" in r["Statement"])
        ),
    ),
    "waf-body-size-rule-blocks-jobs": (
        check_waf_optional,
        lambda t: _p(t, "WebAcl")["Rules"][1]["Statement"]["ManagedRuleGroupStatement"].pop("RuleActionOverrides"),
    ),
    "waf-managed-rules-count-only": (
        check_waf_optional,
        lambda t: _p(t, "WebAcl")["Rules"][2].update(OverrideAction={"Count": {}}),
    ),
    "waf-on-by-default": (check_waf_optional, lambda t: t["Parameters"]["EnableWaf"].update(Default="true")),
    "waf-association-before-stage": (
        check_waf_optional,
        lambda t: _p(t, "WebAclAssociation").update(
            ResourceArn={
                "Fn::Sub": "arn:${AWS::Partition}:apigateway:${AWS::Region}::/restapis/${ImageApi}/stages/prod"
            }
        ),
    ),
    "logging-role-off-by-default": (
        check_api_gateway_logging_role,
        lambda t: t["Parameters"]["CreateApiGatewayLoggingRole"].update(Default="false"),
    ),
    "logging-role-source-account-condition": (
        check_api_gateway_logging_role,
        lambda t: _p(t, "ApiGatewayLoggingRole")["AssumeRolePolicyDocument"]["Statement"][0].update(
            Condition={"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
        ),
    ),
    "event-bus-default-accepted": (
        check_parameters_deployable,
        lambda t: t["Parameters"]["EventBusName"].update(AllowedPattern="^[A-Za-z0-9._-]{1,256}$"),
    ),
    "reserved-concurrency-1000": (
        check_parameters_deployable,
        lambda t: t["Parameters"]["ReservedConcurrency"].update(MaxValue=1000),
    ),
    "layer-name-past-140-chars": (
        check_parameters_deployable,
        lambda t: _p(t, "DependenciesLayer").update(LayerName={"Fn::Sub": "${AWS::StackName}-dependencies"}),
    ),
    "waf-metric-name-from-stack-name": (
        check_parameters_deployable,
        lambda t: _p(t, "WebAcl")["VisibilityConfig"].update(MetricName={"Fn::Sub": "${AWS::StackName}-waf"}),
    ),
    "queue-named-after-stack": (
        check_parameters_deployable,
        lambda t: _p(t, QUEUE_ID).update(QueueName={"Fn::Sub": "${AWS::StackName}-jobs"}),
    ),
    "dlq-allows-other-queue-name": (
        check_jobs_queue_redrive,
        lambda t: _p(t, QUEUE_ID).update(QueueName={"Fn::Sub": "${AWS::StackName}-jobs"}),
    ),
    "dlq-deletable": (check_stateful_resources_retained, lambda t: _res(t, DLQ_ID).pop("DeletionPolicy")),
    "jobs-queue-replaceable": (
        check_stateful_resources_retained,
        lambda t: _res(t, QUEUE_ID).pop("UpdateReplacePolicy"),
    ),
    "webhook-secret-deletable": (
        check_stateful_resources_retained,
        lambda t: _res(t, WEBHOOK_SECRET_ID).update(DeletionPolicy="Delete"),
    ),
    "log-group-deletable": (
        check_stateful_resources_retained,
        lambda t: _res(t, "WorkerFunctionLogGroup").pop("DeletionPolicy"),
    ),
    "retained-log-group-fixed-name": (
        check_stateful_resources_retained,
        lambda t: _p(t, "ApiAccessLogGroup").update(LogGroupName={"Fn::Sub": "/aws/apigateway/${AWS::StackName}"}),
    ),
    "uploads-never-expire": (
        check_lifecycle_bound_to_retention,
        lambda t: _p(t, BUCKET_ID)["LifecycleConfiguration"]["Rules"].remove(_rule(t, "expire-uploads")),
    ),
    "image-requested-rule-removed": (
        check_image_requested_events_reach_the_jobs_queue,
        lambda t: t["Resources"].pop("ImageRequestedRule"),
    ),
    "image-requested-rule-feeds-back-own-events": (
        check_image_requested_events_reach_the_jobs_queue,
        lambda t: _p(t, "ImageRequestedRule")["EventPattern"].pop("source"),
    ),
    "jobs-queue-open-to-any-rule": (
        check_image_requested_events_reach_the_jobs_queue,
        lambda t: _queue_statement(t, "AllowImageRequestedRule").pop("Condition"),
    ),
    "jobs-queue-policy-without-events": (
        check_image_requested_events_reach_the_jobs_queue,
        lambda t: _p(t, "JobsQueuePolicy")["PolicyDocument"]["Statement"].remove(
            _queue_statement(t, "AllowImageRequestedRule")
        ),
    ),
    "upload-route-without-key": (
        check_api_keys_on_v1_routes_only,
        lambda t: _event(t, "CreateUpload").pop("Auth"),
    ),
    "worker-cannot-fan-out": (
        check_function_data_access_scoped,
        lambda t: _p(t, "WorkerFunctionRole")["Policies"][0]["PolicyDocument"]["Statement"].remove(
            _worker_statement(t, "FanOutJobs")
        ),
    ),
    "api-writes-job-objects-anywhere": (
        check_function_data_access_scoped,
        lambda t: _function_statement(t, "JobObjects").update(Resource={"Fn::Sub": "${ImagesBucket.Arn}/*"}),
    ),
    "throttled-without-retry-after": (
        check_gateway_responses,
        lambda t: _p(t, API_ID)["GatewayResponses"]["THROTTLED"]["ResponseParameters"]["Headers"].pop("Retry-After"),
    ),
    "throttled-retry-after-unquoted": (
        check_gateway_responses,
        lambda t: _p(t, API_ID)["GatewayResponses"]["THROTTLED"]["ResponseParameters"]["Headers"].update(
            {"Retry-After": "1"}
        ),
    ),
}


def test_readme_errors_table_lists_every_gateway_code(template: dict[str, Any]) -> None:
    # Given the codes of the answers API Gateway makes itself (GatewayResponses)
    responses = _props(template, API_ID).get("GatewayResponses") or {}
    codes = {
        json.loads(body.replace("$context.error.messageString", '"m"'))["error"]["code"]
        for spec in responses.values()
        for body in (spec.get("ResponseTemplates") or {}).values()
    }
    # When the README's errors table is read: its rows marked as API Gateway's own answers
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if re.match(r"^\| [1-5]\d\d \| `", line)]
    from_gateway = {code for row in rows if "(API Gateway)" in row for code in re.findall(r"`([a-z_]+)`", row)}
    # Then every gateway code is there, marked as coming from API Gateway
    assert codes, "no gateway responses found"
    assert codes <= from_gateway, f"not in the README errors table as (API Gateway): {sorted(codes - from_gateway)}"


def test_every_check_has_a_mutation() -> None:
    covered = {check for check, _ in MUTATIONS.values()}
    assert covered == set(CHECKS), f"checks never shown to fail: {[c.__name__ for c in set(CHECKS) - covered]}"


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_check_fails_without_the_protection(template: dict[str, Any], mutation: str, reliability: Any) -> None:
    check, mutate = MUTATIONS[mutation]
    mutated = copy.deepcopy(template)
    mutate(mutated)
    reliability.record("Template security", f"protection removed: {mutation}", f"{check.__name__} fails")
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


_TRANSFORM_SCRIPT = """
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoNamedManagedPolicies:  # the template names no managed policy: nothing to look up in IAM
    def load(self):
        return {}


for line in sys.stdin:  # one request per line: {"path": ..., "parameters": {...}}; one JSON answer per line
    request = json.loads(line)
    try:
        with open(request["path"], encoding="utf-8") as stream:
            template = yaml_parse(stream.read())
        for resource in template["Resources"].values():  # local code paths become what `sam package` uploads
            for key in ("CodeUri", "ContentUri"):
                if isinstance((resource.get("Properties") or {}).get(key), str):
                    resource["Properties"][key] = "s3://bucket/" + resource["Properties"][key]
        answer = {"template": transform(template, request["parameters"], NoNamedManagedPolicies())}
    except Exception as error:
        answer = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps(answer), flush=True)
"""

SamTransform = Callable[..., dict[str, Any]]


@contextlib.contextmanager
def _translator(stderr_path: Path) -> Iterator[SamTransform]:
    """A process of the SAM CLI's own translator, offline: the template as CloudFormation gets it."""
    _tool("sam")
    python = ROOT / ".tools" / "uv" / "aws-sam-cli" / "bin" / "python"  # the SAM CLI's isolated environment
    if not python.exists():
        pytest.skip("the SAM CLI's environment is not at .tools/uv/aws-sam-cli: run `bash scripts/tools.sh`")
    with stderr_path.open("w", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            [str(python), "-c", _TRANSFORM_SCRIPT],
            cwd=ROOT,
            env=_tool_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout

    def transform(path: Path, parameters: dict[str, str] | None = None) -> dict[str, Any]:
        stdin.write(json.dumps({"path": str(path), "parameters": parameters or {}}) + "\n")
        stdin.flush()
        line = stdout.readline()
        assert line, f"the SAM translator exited ({process.poll()}):\n{stderr_path.read_text(encoding='utf-8')[-6000:]}"
        answer = json.loads(line)
        assert "error" not in answer, f"the SAM translator refused {path} with {parameters}: {answer['error']}"
        return answer["template"]

    try:
        yield transform
    finally:
        stdin.close()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def sam_transform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SamTransform]:
    """One translator for this module's transforms (with these parameter values): starting the SAM CLI's Python
    and importing the translator costs about a second of CPU, and the tests below transform the template 9 times."""
    with _translator(tmp_path_factory.mktemp("sam-transform") / "stderr.txt") as transform:
        yield transform


def _managed_policies(transformed: dict[str, Any], role_id: str) -> list[str]:
    arns = transformed["Resources"][role_id]["Properties"].get("ManagedPolicyArns") or []
    return [json.dumps(arn) for arn in arns]


@pytest.mark.xdist_group("sam-transform")  # one worker, so one translator process serves the three
@pytest.mark.timeout(300)
def test_transformed_roles_keep_least_privilege(sam_transform: SamTransform, tmp_path: Path) -> None:
    """SAM adds policies of its own (event sources, tracing): the generated roles must stay scoped too."""
    transformed = sam_transform(TEMPLATE_PATH)
    for function_id in FUNCTION_IDS:
        role = transformed["Resources"][function_id]["Properties"]["Role"]
        assert role == {"Fn::GetAtt": [f"{function_id}Role", "Arn"]}, f"{function_id}: unexpected role {role}"
        assert not any("SQS" in arn for arn in _managed_policies(transformed, f"{function_id}Role"))
    mappings = _resources_of_type(transformed, "AWS::Lambda::EventSourceMapping")
    assert [m["Properties"]["FunctionResponseTypes"] for m in mappings.values()] == [["ReportBatchItemFailures"]]
    check_no_wildcard_permissions(transformed)
    # ... and the check notices what SAM attaches to a generated role for the SQS event (every queue).
    mutated = load_template()
    _p(mutated, WORKER_ID).pop("Role")
    mutated["Resources"].pop("WorkerFunctionRole")
    (tmp_path / "mutated.json").write_text(json.dumps(mutated), encoding="utf-8")
    with_sqs_event = sam_transform(tmp_path / "mutated.json")
    assert any("AWSLambdaSQSQueueExecutionRole" in arn for arn in _managed_policies(with_sqs_event, f"{WORKER_ID}Role"))
    with pytest.raises(AssertionError, match="AWSLambdaSQSQueueExecutionRole"):
        check_no_wildcard_permissions(with_sqs_event)


def _assert_invoked_through_live_aliases(transformed: dict[str, Any]) -> None:
    resources = transformed["Resources"]
    integrations = re.findall(r"functions/\$\{([A-Za-z0-9.]+)\}/invocations", json.dumps(resources[API_ID]))
    assert integrations and set(integrations) == {f"{FUNCTION_ID}Aliaslive"}, f"the API invokes {set(integrations)}"
    permissions = _resources_of_type(transformed, "AWS::Lambda::Permission").values()
    assert {json.dumps(p["Properties"]["FunctionName"]) for p in permissions} == {
        json.dumps({"Ref": f"{FUNCTION_ID}Aliaslive"})
    }, "API Gateway may invoke only the alias"
    mappings = list(_resources_of_type(transformed, "AWS::Lambda::EventSourceMapping").values())
    assert [m["Properties"]["FunctionName"] for m in mappings] == [{"Ref": f"{WORKER_ID}Aliaslive"}], (
        "the jobs queue's event source mapping must invoke the worker's alias"
    )


@pytest.mark.xdist_group("sam-transform")  # one worker, so one translator process serves the three
@pytest.mark.timeout(300)
def test_transformed_releases_go_through_the_live_aliases(sam_transform: SamTransform, tmp_path: Path) -> None:
    """After SAM's transform: callers invoke the aliases, CodeDeploy shifts them with rollback on the alarms."""
    transformed = sam_transform(TEMPLATE_PATH, {"DeploymentType": "Canary10Percent5Minutes"})
    _assert_invoked_through_live_aliases(transformed)
    resources = transformed["Resources"]
    assert "CodeDeployServiceRole" not in resources, "SAM's generated role (AWSCodeDeployRoleForLambda) is unused"
    groups = _resources_of_type(transformed, "AWS::CodeDeploy::DeploymentGroup")
    assert set(groups) == {f"{function_id}DeploymentGroup" for function_id in FUNCTION_IDS}
    for function_id, expected in ROLLBACK_ALARMS.items():
        group = groups[f"{function_id}DeploymentGroup"]["Properties"]
        assert _evaluate(group["DeploymentConfigName"]) == "CodeDeployDefault.LambdaCanary10Percent5Minutes"
        assert group["ServiceRoleArn"] == {"Fn::GetAtt": ["CodeDeployRole", "Arn"]}
        assert "DEPLOYMENT_STOP_ON_ALARM" in group["AutoRollbackConfiguration"]["Events"]
        alarms = {alarm["Name"]["Ref"] for alarm in group["AlarmConfiguration"]["Alarms"]}
        assert alarms == expected and group["AlarmConfiguration"]["Enabled"] is True
    association = resources["WebAclAssociation"]["Properties"]["ResourceArn"]["Fn::Sub"]
    assert association.endswith(f"/stages/${{{API_ID}prodStage}}"), "the WAF association must wait for the stage"
    check_no_wildcard_permissions(transformed)
    # ... and the helper notices a function invoked without its alias.
    mutated = load_template()
    _p(mutated, FUNCTION_ID).pop("AutoPublishAlias")
    _p(mutated, FUNCTION_ID).pop("DeploymentPreference")
    for output in ("ApiFunctionAlias",):
        mutated["Outputs"].pop(output)
    (tmp_path / "mutated.json").write_text(json.dumps(mutated), encoding="utf-8")
    with pytest.raises(AssertionError, match="the API invokes"):
        _assert_invoked_through_live_aliases(sam_transform(tmp_path / "mutated.json"))


def _version_ids(transformed: dict[str, Any]) -> set[str]:
    return set(_resources_of_type(transformed, "AWS::Lambda::Version"))


@pytest.mark.xdist_group("sam-transform")  # one worker, so one translator process serves the three
@pytest.mark.timeout(300)
def test_transformed_a_layer_change_or_a_new_release_id_publishes_new_versions(
    sam_transform: SamTransform, tmp_path: Path
) -> None:
    """The live aliases only move when SAM names a new version: a change of the shared layer (where the business
    logic lives) or of ReleaseId must name one; the same template twice names the same."""
    base = _version_ids(sam_transform(TEMPLATE_PATH))
    assert len(base) == len(FUNCTION_IDS)
    with _translator(tmp_path / "stderr.txt") as another_process:  # as another `sam deploy` would translate it
        assert _version_ids(another_process(TEMPLATE_PATH)) == base
    changed_layer = load_template()
    _p(changed_layer, "SharedLayer")["ContentUri"] = "s3://artifacts/shared-layer-v2.zip"  # what `sam package` writes
    (tmp_path / "layer.json").write_text(json.dumps(changed_layer), encoding="utf-8")
    assert not _version_ids(sam_transform(tmp_path / "layer.json")) & base
    released = _version_ids(sam_transform(TEMPLATE_PATH, {"ReleaseId": "20261129a"}))
    assert not released & base
    assert not released & _version_ids(sam_transform(TEMPLATE_PATH, {"ReleaseId": "20261129b"}))


@pytest.mark.timeout(300)
def test_checkov_has_no_failed_checks(reliability: Any) -> None:
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
    reliability.record(
        "Template security",
        "checkov (cloudformation)",
        f"{summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped (justified inline)",
        checkov_passed=summary["passed"],
        checkov_failed=summary["failed"],
        checkov_skipped=summary["skipped"],
    )
    assert summary["failed"] == 0, f"checkov failed checks: {stdout[:4000]}"
    assert summary["parsing_errors"] == 0, "checkov could not parse the template"
    assert summary["passed"] >= 10, "checkov ran almost no check: did it read the template?"
