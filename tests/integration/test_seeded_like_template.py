"""The local stack's moto is seeded like template.yaml: what seeding created, read back from moto, is compared with
the template's own properties (read here straight from the template, not through the seeding code).

A template change the local stack does not follow (a new key, another visibility timeout or redrive count, a
bucket left public) fails here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools import Metrics
from devstack.aws import POWERTOOLS_IDENTITY, LocalAws, Resources, Seeded
from devstack.template import Intrinsics, load_template

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


@pytest.fixture(scope="module")
def template_props() -> dict[str, Any]:
    template = load_template(TEMPLATE)
    intrinsics = Intrinsics(template)
    return {
        logical_id: intrinsics.resolve(resource.get("Properties") or {})
        for logical_id, resource in template["Resources"].items()
    }


@pytest.fixture(scope="module")
def seeded() -> Iterator[tuple[LocalAws, Resources, Seeded]]:
    aws = LocalAws().start()
    try:
        resources = Resources()
        yield aws, resources, aws.seed(resources)
    finally:
        aws.stop()


@pytest.mark.parametrize(("table_id", "name_of"), [("ImagesTable", "table"), ("IdempotencyTable", "idempotency_table")])
def test_seeded_tables_have_the_template_keys_and_ttl(seeded, template_props, table_id: str, name_of: str) -> None:
    # Given the seeded moto and the template's table
    aws, resources, _ = seeded
    expected = template_props[table_id]
    dynamodb = aws.client("dynamodb")
    name = getattr(resources, name_of)

    # When the table is read back
    table = dynamodb.describe_table(TableName=name)["Table"]
    ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]

    # Then keys, attribute types, billing mode and TTL attribute are the template's
    assert table["KeySchema"] == expected["KeySchema"]
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(expected["AttributeDefinitions"], key=str)
    assert table["BillingModeSummary"]["BillingMode"] == expected["BillingMode"]
    assert ttl["TimeToLiveStatus"] == "ENABLED"
    assert ttl["AttributeName"] == expected["TimeToLiveSpecification"]["AttributeName"]


def _attributes(aws: LocalAws, url: str) -> dict[str, str]:
    return aws.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def test_seeded_jobs_queue_has_the_template_timeouts_and_redrive(seeded, template_props) -> None:
    # Given the seeded queues and the template's JobsQueue
    aws, resources, queues = seeded
    expected = template_props["JobsQueue"]

    # When their attributes are read back
    jobs, dlq = _attributes(aws, queues.jobs_queue_url), _attributes(aws, queues.jobs_dlq_url)
    redrive = json.loads(jobs["RedrivePolicy"])

    # Then visibility, retention and the redrive count are the template's, and the redrive targets the DLQ
    assert int(jobs["VisibilityTimeout"]) == int(expected["VisibilityTimeout"])
    assert int(jobs["MessageRetentionPeriod"]) == int(expected["MessageRetentionPeriod"])
    assert int(redrive["maxReceiveCount"]) == int(expected["RedrivePolicy"]["maxReceiveCount"])
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
    expected_dlq = template_props["JobsDeadLetterQueue"]
    assert int(dlq["MessageRetentionPeriod"]) == int(expected_dlq["MessageRetentionPeriod"])
    # And the functions are told the same redrive count (MAX_RECEIVE_COUNT)
    assert resources.max_receive_count == int(expected["RedrivePolicy"]["maxReceiveCount"])


def test_seeded_bucket_is_private_and_encrypted_like_the_template(seeded, template_props) -> None:
    # Given the seeded bucket and the template's ImagesBucket
    aws, resources, _ = seeded
    expected = template_props["ImagesBucket"]
    s3 = aws.client("s3")

    # When its protections are read back
    block = s3.get_public_access_block(Bucket=resources.bucket)["PublicAccessBlockConfiguration"]
    rules = s3.get_bucket_encryption(Bucket=resources.bucket)["ServerSideEncryptionConfiguration"]["Rules"]

    # Then they are the template's (with its default parameters: no KMS key, so AES256)
    assert block == expected["PublicAccessBlockConfiguration"]
    default = expected["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == default["SSEAlgorithm"]
    ownership = s3.get_bucket_ownership_controls(Bucket=resources.bucket)["OwnershipControls"]["Rules"]
    assert ownership == expected["OwnershipControls"]["Rules"]


def test_seeded_bucket_has_the_template_lifecycle_rules(seeded, template_props) -> None:
    # Given the seeded bucket and the template's lifecycle rules (CloudFormation's shape)
    aws, resources, _ = seeded
    expected = template_props["ImagesBucket"]["LifecycleConfiguration"]["Rules"]

    # When the bucket's lifecycle is read back (the S3 API's shape)
    rules = aws.client("s3").get_bucket_lifecycle_configuration(Bucket=resources.bucket)["Rules"]

    # Then each template rule is there with its prefix, expiry and multipart abort
    seen = {rule["ID"]: rule for rule in rules}
    assert sorted(seen) == sorted(rule["Id"] for rule in expected)
    for rule in expected:
        got = seen[rule["Id"]]
        assert got["Status"] == rule["Status"]
        assert got.get("Filter", {}).get("Prefix", "") == rule.get("Prefix", "")
        assert got.get("Expiration", {}).get("Days") == (
            int(rule["ExpirationInDays"]) if "ExpirationInDays" in rule else None
        )
        abort = rule.get("AbortIncompleteMultipartUpload")
        assert got.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation") == (
            int(abort["DaysAfterInitiation"]) if abort else None
        )


def test_seeded_bus_and_image_requested_rule_are_the_template_ones(seeded, template_props) -> None:
    # Given the seeded bus and the template's EventBus and ImageRequestedRule
    aws, resources, queues = seeded
    events = aws.client("events")

    # When the bus and its rules are read back
    bus_name = template_props["EventBus"]["Name"]
    rules = {rule["Name"]: rule for rule in events.list_rules(EventBusName=bus_name)["Rules"]}
    targets = events.list_targets_by_rule(Rule="image-requested", EventBusName=bus_name)["Targets"]

    # Then the bus has the template's name and the rule its pattern, targeting the jobs queue
    assert resources.event_bus == bus_name
    assert json.loads(rules["image-requested"]["EventPattern"]) == template_props["ImageRequestedRule"]["EventPattern"]
    assert [target["Arn"] for target in targets] == [_attributes(aws, queues.jobs_queue_url)["QueueArn"]]


def test_the_functions_say_who_they_are_as_the_template_names_them(stack) -> None:
    # Given the template's Powertools service name and metrics namespace (its Globals), and the session's stack
    template = load_template(TEMPLATE)
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    identity = {name: variables[name] for name in POWERTOOLS_IDENTITY}
    # Then the stack gives the functions those values
    assert identity == POWERTOOLS_IDENTITY
    assert {name: stack.env[name] for name in identity} == identity
    # And every metrics object of the functions' modules has the namespace, whenever its module was imported in
    # this process (a unit test, or the suite's own imports, may import one before the stack set its environment;
    # without a namespace a Metrics fails when it publishes by itself, at 100 values of one metric)
    loaded = {
        name: module.metrics
        for name, module in sys.modules.items()
        if (name.startswith("imagegen.") or name in {"api_support", "worker_handler"})
        and isinstance(getattr(module, "metrics", None), Metrics)
    }
    assert {"imagegen.service", "imagegen.jobs", "api_support", "worker_handler"} <= loaded.keys()
    assert {name: metrics.namespace for name, metrics in loaded.items()} == dict.fromkeys(
        loaded, identity["POWERTOOLS_METRICS_NAMESPACE"]
    )
