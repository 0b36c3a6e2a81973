"""``GET /openapi.json`` and ``GET /docs`` (Swagger UI), when the deployment enables them (``EnableDocs``), and
``openapi_spec``, the document they serve (``make docs`` writes it to ``docs/openapi.json``).

Powertools' OpenAPI models and the Swagger UI cost ~200 ms to import: they load when the document is first asked
for, not at cold start (so no ``app.configure_openapi``/``enable_swagger`` at import; these two routes do what
``enable_swagger`` does). Not here: what the document says (the routes' decorators and ``api_openapi``).
"""

import json
import pathlib
import re
from functools import lru_cache
from typing import Any

import api_openapi as doc
import api_support
from api_support import public_link
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver, Router
from aws_lambda_powertools.event_handler.exceptions import NotFoundError

router = Router()


@lru_cache(maxsize=1)
def _openapi_document() -> dict[str, Any]:
    from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn

    app = router.api_resolver  # the resolver that included this router: it knows every route
    if not isinstance(app, ApiGatewayResolver):
        raise RuntimeError("routes.docs.router must be included in the app (app.include_router) first")
    document = json.loads(
        app.get_openapi_json_schema(
            title=doc.API_TITLE,
            version=doc.API_VERSION,
            description=doc.API_DESCRIPTION,
            security_schemes={"apiKey": APIKey(name="x-api-key", in_=APIKeyIn.header)},
        )
    )
    return _without_unreferenced_schemas(document)


def _without_unreferenced_schemas(document: dict[str, Any]) -> dict[str, Any]:
    """Powertools lists its own validation-error schemas (``HTTPValidationError``…) even when every route
    documents its 422 with ours; a schema no operation can return is noise in a client generator."""
    schemas = document.get("components", {}).get("schemas", {})

    def referenced(node: Any) -> list[str]:
        return re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(node))

    used: set[str] = set()
    pending = referenced({key: value for key, value in document.items() if key != "components"})
    while pending:
        name = pending.pop()
        if name not in used and name in schemas:
            used.add(name)
            pending.extend(referenced(schemas[name]))
    document["components"]["schemas"] = {name: schema for name, schema in schemas.items() if name in used}
    return document


def openapi_spec(servers: list[dict[str, Any]] | None = None) -> str:
    """The OpenAPI document with ``servers`` (default: the caller's own stage or base path)."""
    if servers is None:
        servers = [{"url": public_link(router, "") or "/", "description": "This API, where this document was fetched"}]
    return json.dumps({**_openapi_document(), "servers": servers}, indent=2)


@router.get("/openapi.json", include_in_schema=False)
def openapi_json():  # no return annotation: Powertools would try to model the bare Response
    if not api_support.http_settings.enable_docs:
        raise NotFoundError()
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=openapi_spec())


@router.get("/docs", include_in_schema=False)
def swagger_ui():
    if not api_support.http_settings.enable_docs:
        raise NotFoundError()
    from aws_lambda_powertools.event_handler.openapi import swagger_ui as swagger_ui_assets
    from aws_lambda_powertools.event_handler.openapi.swagger_ui import generate_swagger_html

    assets = pathlib.Path(swagger_ui_assets.__file__).parent
    spec = openapi_spec().replace("</", "<\\/")  # keep "</script>" inside the spec from closing the tag
    body = generate_swagger_html(
        spec,
        (assets / "swagger-ui-bundle.min.js").read_text(encoding="utf-8"),
        (assets / "swagger-ui.min.css").read_text(encoding="utf-8"),
        "",
        None,
    )
    return Response(status_code=200, content_type="text/html", body=body)
