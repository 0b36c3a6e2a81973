"""What the local stack seeds is read from the template (``devstack.template_resources``): a change to the
template changes it, and a resource the template no longer declares is an error, not an invented default."""

from __future__ import annotations

from pathlib import Path

import pytest
from devstack.template_resources import TEMPLATE, read_seed_spec, seed_spec


def _edited_template(tmp_path: Path, old: str, new: str) -> Path:
    text = TEMPLATE.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} is no longer in template.yaml once"
    path = tmp_path / "template.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def test_seed_spec_of_the_service_template() -> None:
    spec = seed_spec()

    assert [key["AttributeName"] for key in spec.images_table.key_schema] == ["pk", "sk"]
    assert spec.images_table.ttl_attribute == "expires_at"
    assert spec.idempotency_table.ttl_attribute == "expiration"
    assert spec.jobs_queue.visibility_timeout_s == 780
    assert spec.jobs_queue.max_receive_count == 5  # JobMaxReceiveCount's default
    assert spec.jobs_dlq.max_receive_count is None
    assert spec.bucket.sse_algorithm == "AES256"  # no KmsKeyArn: the HasKmsKey condition is false
    assert all(spec.bucket.public_access_block.values())
    assert spec.event_bus_name == "flux-image-service"
    # The source the local bus captures for `make events` is the one the service publishes with
    from imagegen.adapters.events import SOURCE

    assert spec.service_event_source == SOURCE == "flux-image-service"


def test_seed_spec_follows_a_template_change(tmp_path: Path) -> None:
    # Given a template whose jobs queue has another visibility timeout and whose images table another TTL attribute
    path = _edited_template(tmp_path, "VisibilityTimeout: 780", "VisibilityTimeout: 900")
    path.write_text(
        path.read_text(encoding="utf-8").replace("AttributeName: expires_at", "AttributeName: gone_at"),
        encoding="utf-8",
    )

    # When it is read
    spec = read_seed_spec(path)

    # Then the seeding follows it
    assert spec.jobs_queue.visibility_timeout_s == 900
    assert spec.images_table.ttl_attribute == "gone_at"


def test_seed_spec_evaluates_parameters(tmp_path: Path) -> None:
    spec = read_seed_spec(TEMPLATE, parameters={"JobMaxReceiveCount": 7, "EventBusName": "other-bus"})

    assert spec.jobs_queue.max_receive_count == 7
    assert spec.event_bus_name == "other-bus"


def test_seed_spec_names_a_missing_resource(tmp_path: Path) -> None:
    path = _edited_template(tmp_path, "  IdempotencyTable:\n", "  RenamedTable:\n")

    with pytest.raises(ValueError, match="IdempotencyTable"):
        read_seed_spec(path)


def test_seed_spec_converts_lifecycle_rules_and_refuses_what_it_cannot_reproduce(tmp_path: Path) -> None:
    # Given the service template's lifecycle rules, then one with a transition the local stack does not reproduce
    uploads = next(rule for rule in seed_spec().bucket.lifecycle_rules if rule["ID"] == "expire-uploads")
    path = _edited_template(
        tmp_path, "            Prefix: uploads/\n", "            Prefix: uploads/\n            Transitions: []\n"
    )

    # Then the first is in the S3 API's shape, and the second is refused, naming the rule and the key
    assert uploads == {
        "ID": "expire-uploads",
        "Status": "Enabled",
        "Filter": {"Prefix": "uploads/"},
        "Expiration": {"Days": 1},
    }
    with pytest.raises(ValueError, match=r"expire-uploads.*Transitions"):
        read_seed_spec(path)
