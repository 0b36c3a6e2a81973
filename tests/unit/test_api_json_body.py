"""How the body routes read a body (functions/api/api_json_body.py), pinned against Powertools' event handler.

``JsonBodyValidation`` overrides a non-public method of Powertools' request validation (``_get_body``) and is put on
the body routes through the public ``enable_validation=False`` + ``middlewares=`` of a Router's route. Each test
here fails when a Powertools release changes what that relies on: if ``_get_body`` is renamed or no longer called,
a form is parsed into fields, ``APPLICATION/JSON`` is refused and a multipart type without a boundary is a 500
again; if the route's middlewares stop carrying Powertools' response validation, a bad answer goes out.
A toy app on the real middlewares: no socket, no AWS, and ``api_support`` (whose settings load at import) is
never imported.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import pytest
from api_json_body import JSON_BODY, media_type
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestUnsupportedContentType, RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Body
from imagegen.errors import ServiceError
from pydantic import BaseModel
from support.events import load_event


class Item(BaseModel):
    name: str
    count: int = 0


router = Router()


@router.post("/items", **JSON_BODY)
def create_item(item: Annotated[Item, Body()]) -> Item:
    return item


@router.post("/bad-answer", **JSON_BODY)
def bad_answer(item: Annotated[Item, Body()]) -> Item:
    return {"name": ["not", "a", "string"]}  # type: ignore[return-value]  # what response validation must catch


@router.post("/no-body")
def no_body() -> dict[str, bool]:
    return {"ok": True}


app = APIGatewayRestResolver(enable_validation=True)
app.include_router(router)


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body)


@app.exception_handler(ServiceError)  # JsonBodyValidation's refusal (UnsupportedMediaTypeError is one)
def service_error(exc: ServiceError) -> Response:
    return _json(exc.status, {"code": exc.code, "message": exc.message})


@app.exception_handler(RequestValidationError)
def validation_error(exc: RequestValidationError) -> Response:
    errors = exc.errors()
    return _json(422, {"code": "validation", "types": [e.get("type") for e in errors], "errors": repr(errors)})


@app.exception_handler(RequestUnsupportedContentType)  # Powertools' own refusal: never reached on a body route
def powertools_refusal(exc: RequestUnsupportedContentType) -> Response:
    return _json(400, {"code": "powertools_unsupported_content_type"})


def post(path: str, body: str, content_type: str | None) -> tuple[int, dict[str, Any]]:
    event = load_event("post_image")
    event.update(path=path, resource=path, body=body)
    for headers in (event["headers"], event["multiValueHeaders"]):
        for name in [name for name in headers if name.lower() == "content-type"]:
            del headers[name]
    if content_type is not None:
        event["headers"]["Content-Type"] = content_type
        event["multiValueHeaders"]["Content-Type"] = [content_type]
    response = app.resolve(event, None)  # type: ignore[arg-type]  # the toy routes read no Lambda context
    return response["statusCode"], json.loads(response["body"])


@pytest.mark.parametrize("declared", ["application/json", "APPLICATION/JSON; charset=UTF-8", "Application/Json", None])
def test_a_json_body_is_read_whatever_the_case_of_its_media_type_or_without_one(declared):
    # Given a body route, When a JSON body comes with application/json in any case (or no media type)
    status, body = post("/items", '{"name": "fox", "count": 2}', declared)
    # Then it is parsed and validated against the model (Powertools would refuse the capitals)
    assert (status, body) == (200, {"name": "fox", "count": 2})


@pytest.mark.parametrize(
    ("declared", "body"),
    [
        ("text/plain", '{"name": "fox"}'),
        ("application/x-www-form-urlencoded", "name=fox"),  # Powertools would parse it into fields
        ("multipart/form-data", "--x--"),  # Powertools fails with a 500 on a multipart type without a boundary
        ("multipart/form-data; boundary=x", '--x\r\nContent-Disposition: form-data; name="name"\r\n\r\nfox\r\n--x--'),
        ("application/xml", "<name>fox</name>"),
    ],
)
def test_any_other_media_type_is_refused_with_415_naming_it(declared, body):
    # Given a body route, When the body is declared as something else than JSON
    status, answer = post("/items", body, declared)
    # Then the override refused it (Powertools' own refusal or parsing never ran), naming the media type
    assert status == 415, answer
    assert answer["code"] == "unsupported_media_type"
    assert answer["message"] == f"the request body must be application/json, not {media_type(declared)}"


def test_an_integer_past_python_s_digit_limit_is_malformed_json_not_a_500():
    # Given a body whose number json.loads refuses with a ValueError that is no JSONDecodeError
    status, answer = post("/items", '{"name": "fox", "count": ' + "9" * 5000 + "}", "application/json")
    # Then it is a json_invalid validation error, as broken JSON is
    assert (status, answer["types"]) == (422, ["json_invalid"])


def test_broken_json_is_a_json_invalid_validation_error_with_its_reason():
    status, answer = post("/items", '{"name": "fox"', "application/json")
    assert (status, answer["types"]) == (422, ["json_invalid"])
    assert "Expecting" in answer["errors"]


def test_a_json_body_that_breaks_the_model_is_validated_field_by_field():
    # Given a JSON body of the wrong shape, Then Powertools' own validation still runs after the body is read
    status, answer = post("/items", '{"count": "many"}', "application/json")
    assert status == 422
    assert sorted(answer["types"]) == ["int_parsing", "missing"]


def test_the_answer_of_a_body_route_is_still_validated():
    # Given a body route whose answer breaks its declared model, Then Powertools' response validation refuses it
    status, answer = post("/bad-answer", '{"name": "fox"}', "application/json")
    assert status == 422 and "string_type" in answer["types"]


def test_a_route_without_a_body_ignores_the_media_type():
    # Given a route that takes no body, When a request to it declares a media type that is not JSON
    status, answer = post("/no-body", "anything", "text/plain")
    # Then nothing reads the body: the route answers (as it did before the body routes took their own middlewares)
    assert (status, answer) == (200, {"ok": True})
