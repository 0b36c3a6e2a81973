"""``POST /v1/uploads``: where to PUT a large job's items (a JSONL file), before ``POST /v1/jobs``.

Not here: the presigned URL and the file's limits (``imagegen.jobs``), the documentation of the answers
(``api_openapi``), the error answers (``api_errors``).
"""

import api_openapi as doc
from api_support import job_service, tracer
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from imagegen.models import UploadDocument

router = Router()


@router.post(
    "/v1/uploads",
    summary="Upload a large job's items",
    description=(
        "Answers a presigned S3 PUT URL for a JSONL file: one `POST /v1/images` body per line, blank lines "
        "ignored, at most `max_bytes` and `max_lines`. PUT the file there, then `POST /v1/jobs` with "
        "`items_upload_id`. The file is deleted a day after it was uploaded."
    ),
    responses=doc.CREATE_UPLOAD,
    security=doc.API_KEY_SECURITY,
    tags=["jobs"],
)
@tracer.capture_method
def create_upload() -> Response[UploadDocument]:
    document = job_service().create_upload()
    return Response(status_code=201, content_type=content_types.APPLICATION_JSON, body=document)
