"""Write docs/job-message.schema.json (the queue message, for direct producers),
docs/image-requested.schema.json (the ``Image Requested`` event, for content workflows) and docs/openapi.json from
the code. `make docs` runs it; a test fails when the committed files are stale."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def job_message_schema() -> str:
    from imagegen.models import JobMessage

    schema = JobMessage.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def image_requested_schema() -> str:
    """The EventBridge event a workflow publishes on the service's bus: the envelope fields that matter, with the
    ``detail`` model."""
    from imagegen.models import ImageRequestedDetail

    detail = ImageRequestedDetail.model_json_schema()
    definitions = detail.pop("$defs", {})
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Image Requested event (EventBridge)",
        "description": (
            "Published on the service's bus (stack output EventBusName) with any source but flux-image-service; "
            "one job per event id. Fields EventBridge adds (version, account, time, region, resources) are allowed."
        ),
        "type": "object",
        "required": ["id", "detail-type", "source", "detail"],
        "properties": {
            "id": {"type": "string", "description": "Set by EventBridge; the job id derives from it."},
            "detail-type": {"const": "Image Requested"},
            "source": {"type": "string", "not": {"const": "flux-image-service"}},
            "detail": detail,
        },
        "$defs": definitions,
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def openapi_spec() -> str:
    os.environ.setdefault("ENABLE_DOCS", "true")
    import api_handler

    servers = [
        {
            "url": "https://{restApiId}.execute-api.{region}.amazonaws.com/prod",
            "description": "A deployed stack (its ApiUrl output)",
            "variables": {
                "restApiId": {"default": "abcdef1234", "description": "the REST API's id"},
                "region": {"default": "us-east-1", "description": "the stack's Region"},
            },
        },
        {"url": "http://127.0.0.1:3000", "description": "The local stack (make run)"},
    ]
    return json.dumps(json.loads(api_handler.openapi_spec(servers)), indent=2, sort_keys=True) + "\n"


OUTPUTS = {
    "docs/job-message.schema.json": job_message_schema,
    "docs/image-requested.schema.json": image_requested_schema,
    "docs/openapi.json": openapi_spec,
}


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    for relative, render in OUTPUTS.items():
        path = ROOT / relative
        text = render()
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(relative)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {relative}")
    if stale:
        print("stale: " + ", ".join(stale) + " (run 'make docs')")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
