"""Check real API traffic against the OpenAPI document, for any module's tests.

    from .openapi_check import assert_matches_openapi, checked
    response = admin_api.post("/api/v1/experiments", json=body)
    assert_matches_openapi(response)        # path and method taken from the request
    api = checked(admin_api)                # or: every call through `api` is checked

A response passes when its path, method and status are documented, its JSON body
validates against the documented schema (JSON Schema 2020-12, formats checked), and
its required documented headers are present. For a 2xx response the JSON request
body must also validate against the documented request schema, so the document
cannot be stricter than what the API really accepts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from expplatform.api.openapi import document

API_PREFIX = "/api/v1"
_DOC_URI = "urn:expplatform:openapi"
METHODS = ("get", "put", "post", "delete", "patch")


@lru_cache(maxsize=1)
def _registry() -> Registry:
    return Registry().with_resource(_DOC_URI, Resource(contents=document(), specification=DRAFT202012))


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def validate(instance: Any, *pointer: str) -> None:
    """Validate ``instance`` against the schema at ``pointer`` inside the document
    (its ``$ref``s resolve within the document)."""
    schema = {"$ref": f"{_DOC_URI}#/{_pointer(*pointer)}"}
    Draft202012Validator(schema, registry=_registry(), format_checker=FormatChecker()).validate(instance)


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
    return re.compile(f"^{pattern}$")


def find_operation(path: str, method: str) -> tuple[str, dict[str, Any]]:
    """The documented template and operation for a concrete request path; literal
    templates win over ones with parameters."""
    relative = path.split("?", 1)[0]
    assert relative.startswith(API_PREFIX), f"{path} is not an API path"
    relative = relative[len(API_PREFIX) :] or "/"
    paths = document()["paths"]
    for template in sorted(paths, key=lambda t: (t.count("{"), t)):
        if _template_regex(template).match(relative):
            operation = paths[template].get(method.lower())
            assert operation is not None, f"{method} {template} is not documented"
            return template, operation
    raise AssertionError(f"no documented path matches {relative}")


def _response_parts(response: Any) -> tuple[str, str, int, dict[str, str], Any, Any]:
    """(path, method, status, headers, response JSON, request JSON) from a Flask test
    response or a ``requests`` response."""
    request = response.request
    if hasattr(request, "path_url"):  # requests
        path, body = request.path_url, request.body
        payload = response.json() if response.content else None
    else:  # werkzeug test client: the app has read the body, so read it again
        stream = request.environ.get("wsgi.input")
        body = b""
        if stream is not None and stream.seekable():
            stream.seek(0)
            body = stream.read()
        path = request.path
        payload = response.get_json(silent=True) if response.data else None
    if isinstance(body, bytes):
        body = body.decode()
    try:
        request_json = json.loads(body) if body else None
    except ValueError:
        request_json = None
    return path, request.method, response.status_code, dict(response.headers), payload, request_json


def assert_matches_openapi(response: Any, path: str | None = None, method: str | None = None) -> None:
    real_path, real_method, status, headers, payload, request_json = _response_parts(response)
    template, operation = find_operation(path or real_path, method or real_method)
    method_key = (method or real_method).lower()
    responses = operation["responses"]
    key = next((k for k in (str(status), f"{str(status)[0]}XX", "default") if k in responses), None)
    assert key is not None, f"{real_method} {template} does not document status {status}: {payload}"
    documented = responses[key]
    content = documented.get("content", {}).get("application/json")
    if content is not None:
        assert headers.get("Content-Type", "").startswith("application/json"), headers.get("Content-Type")
        validate(payload, "paths", template, method_key, "responses", key, "content", "application/json", "schema")
    for name, header in documented.get("headers", {}).items():
        if header.get("required"):
            assert name in headers, f"{real_method} {template} {status} must send {name}"
    body_doc = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if 200 <= status < 300 and body_doc is not None and request_json is not None:
        validate(request_json, "paths", template, method_key, "requestBody", "content", "application/json", "schema")


def request_examples() -> Iterator[tuple[str, str, str, Any]]:
    """Every documented request example: (template, method, example name, value)."""
    for template, item in document()["paths"].items():
        for method in METHODS:
            media = item.get(method, {}).get("requestBody", {}).get("content", {}).get("application/json", {})
            if "example" in media:
                yield template, method, "example", media["example"]
            for name, example in media.get("examples", {}).items():
                yield template, method, name, example["value"]


def assert_example_valid(template: str, method: str, value: Any) -> None:
    validate(value, "paths", template, method, "requestBody", "content", "application/json", "schema")


class checked:
    """Wrap a ``conftest.Api`` (or a test client) so every response it returns is
    checked against the document before the test sees it."""

    def __init__(self, api: Any) -> None:
        self._api = api

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._api, name)
        if name not in METHODS:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            response = attribute(*args, **kwargs)
            assert_matches_openapi(response)
            return response

        return call
