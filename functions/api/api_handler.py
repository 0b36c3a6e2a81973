"""HTTP entry point: API Gateway (REST, proxy integration) → Powertools APIGatewayRestResolver.

A table of contents: the app, its CORS, the routers it includes, and the handler. Where the rest lives (all of
it in this folder, which only the API function ships):

- ``routes/``: one ``Router`` per resource (images, jobs, uploads, docs, console); their paths, parameters and
  operation descriptions, validated at the edge by Powertools.
- ``api_errors``: the one place where exceptions become HTTP answers (a ``Router`` of exception handlers).
- ``api_openapi``: the OpenAPI documentation of every operation's answers.
- ``api_json_body``: how a body route reads its body (JSON only).
- ``api_support``: what the route modules share (logger, metrics, tracer, settings, services, links).

The work lives in the shared layer (``imagegen``).
"""

from typing import Any

import api_errors
from api_support import http_settings, logger, metrics, tracer
from api_support import image_service as image_service  # the local stack's tests reach the service through here
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, CORSConfig
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from imagegen.snapstart import register_hooks
from routes import console, docs, images, jobs, uploads
from routes.docs import openapi_spec as openapi_spec  # make docs writes docs/openapi.json from it

register_hooks()  # SnapStart only (EnableSnapStart): each restored environment re-seeds and rebuilds

ALLOWED_HEADERS = ["Content-Type", "X-Api-Key", "Idempotency-Key", "Prefer"]
EXPOSED_HEADERS = ["Location", "Retry-After", "Idempotent-Replayed"]


def _cors(origins: list[str]) -> CORSConfig | None:
    if not origins:
        return None
    return CORSConfig(
        allow_origin=origins[0],
        extra_origins=origins[1:],
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )


cors = _cors(http_settings.cors_allowed_origins)
app = APIGatewayRestResolver(enable_validation=True, cors=cors)
app.include_router(images.router)  # POST /v1/images, GET /v1/images/{id}
app.include_router(uploads.router)  # POST /v1/uploads
app.include_router(jobs.router)  # POST /v1/jobs, GET and DELETE /v1/jobs/{id}
app.include_router(docs.router)  # GET /openapi.json, GET /docs
app.include_router(console.router)  # GET /console/, GET /console/{file}
app.include_router(api_errors.router)  # exception → answer, for every route


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return _varies_by_origin(app.resolve(event, context))


def _varies_by_origin(response: dict[str, Any]) -> dict[str, Any]:
    """With CORS, an answer depends on the caller's Origin (echoed in Access-Control-Allow-Origin, or left out for
    an origin not allowed): ``Vary: Origin`` keeps a shared cache from serving one origin's answer to another."""
    if cors is None:
        return response
    headers = response.setdefault("multiValueHeaders", {})
    vary = [value for value in headers.pop("Vary", []) if value.strip().lower() != "origin"]
    headers["Vary"] = [*vary, "Origin"]
    return response
