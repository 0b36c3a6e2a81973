"""The schemas published in docs/ are generated from the code and must not drift from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from imagegen.models import JobMessage

ROOT = Path(__file__).resolve().parents[2]


def test_published_schemas_match_the_code():
    env_path = ":".join(str(ROOT / part) for part in ("layers/shared", "functions/api", "local"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/export_schemas.py"), "--check"],
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_producer_message_valid_under_the_published_schema_is_accepted_by_the_worker_model():
    schema = json.loads((ROOT / "docs/job-message.schema.json").read_text())
    example = {"request": {"prompt": "a red fox", "seed": 7}, "correlation_id": "order-1234"}
    assert set(example) <= set(schema["properties"])
    assert schema["required"] == ["request"]
    assert schema["additionalProperties"] is False
    assert JobMessage.model_validate_json(json.dumps(example)).request.prompt == "a red fox"


def test_the_sample_image_requested_event_is_valid_under_the_published_schema_and_the_worker_model():
    import jsonschema
    from imagegen.models import ImageRequestedDetail

    schema = json.loads((ROOT / "docs/image-requested.schema.json").read_text())
    event = json.loads((ROOT / "events/image_requested.json").read_text())
    jsonschema.validate(event, schema)
    assert len(ImageRequestedDetail.model_validate_json(json.dumps(event["detail"])).all_requests) == 2
    own = {**event, "source": "flux-image-service"}
    try:
        jsonschema.validate(own, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("the service's own source must not validate (the rule ignores it)")


def test_the_published_job_message_schema_takes_num_images_and_the_service_item_origin():
    import jsonschema

    schema = json.loads((ROOT / "docs/job-message.schema.json").read_text())
    several = {"request": {"prompt": "three foxes", "seed": 7, "num_images": 3}, "correlation_id": "order-1"}
    # A producer's message of several images is valid under the schema and the worker's model alike
    jsonschema.validate(several, schema)
    assert JobMessage.model_validate_json(json.dumps(several)).request.num_images == 3
    # Five images is refused by both
    five = {"request": {"prompt": "x", "num_images": 5}}
    try:
        jsonschema.validate(five, schema)
    except jsonschema.ValidationError as exc:
        assert "num_images" in [str(part) for part in exc.absolute_path]
    else:
        raise AssertionError("num_images 5 must not validate")
    # The service's own item message (one image of a job, with its request and image index) is described too
    item = {"request": {"prompt": "x", "seed": 8}, "job_id": "job_" + "0" * 32, "index": 1}
    item |= {"request_index": 0, "image_index": 1}
    jsonschema.validate(item, schema)
    assert JobMessage.model_validate_json(json.dumps(item)).image_index == 1
    try:
        jsonschema.validate({**item, "image_index": 4}, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("image_index 4 must not validate: a request has at most 4 images")
