"""The OpenAPI document: a valid OpenAPI 3.1 document, served publicly, covering
exactly the API's routes, with request examples that validate and that the real
API accepts, and a checker (tests/openapi_check.py) that does reject bad traffic."""

from __future__ import annotations

import re

import pytest
from jsonschema.exceptions import ValidationError as SchemaError
from openapi_spec_validator import validate

from expplatform.api.openapi import document

from .openapi_check import API_PREFIX, assert_example_valid, assert_matches_openapi, request_examples

ROUTE_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def test_document_is_valid_openapi():
    validate(document())


def test_document_is_served_without_credentials(client):
    response = client.get(f"{API_PREFIX}/openapi.json")
    assert response.status_code == 200 and response.json == document()
    assert_matches_openapi(response)


def _flask_template(rule: str) -> str:
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def test_every_api_route_is_documented_and_every_documented_route_exists(app):
    routes = {
        (_flask_template(rule.rule)[len(API_PREFIX) :], method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(API_PREFIX + "/")
        for method in rule.methods & ROUTE_METHODS
    }
    documented = {
        (path, method)
        for path, item in document()["paths"].items()
        for method in item
        if method.upper() in ROUTE_METHODS
    }
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented operations with no route"


def test_every_operation_documents_its_error_responses():
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            if method.upper() not in ROUTE_METHODS:
                continue
            statuses = set(operation["responses"])
            assert any(s.startswith("2") for s in statuses), f"{method} {path}"
            if operation.get("security") != []:
                assert {"401", "403"} <= statuses, f"{method} {path} must document 401 and 403"


EXAMPLES = list(request_examples())


def test_there_are_request_examples():
    assert {(path, method) for path, method, _, _ in EXAMPLES} >= {
        ("/experiments", "post"),
        ("/experiments/{key}", "patch"),
    }


@pytest.mark.parametrize(("path", "method", "name", "value"), EXAMPLES, ids=[f"{m} {p} {n}" for p, m, n, _ in EXAMPLES])
def test_request_examples_validate_against_their_schema(path, method, name, value):
    assert_example_valid(path, method, value)


def test_experiment_examples_are_accepted_by_the_real_api(admin_api):
    examples = {(path, method): value for path, method, _, value in EXAMPLES if path.startswith("/experiments")}
    created = admin_api.post(f"{API_PREFIX}/experiments", json=examples[("/experiments", "post")])
    assert created.status_code == 201
    assert_matches_openapi(created)
    key = created.json["key"]
    patched = admin_api.patch(f"{API_PREFIX}/experiments/{key}", json=examples[("/experiments/{key}", "patch")])
    assert patched.status_code == 200
    assert_matches_openapi(patched)
    cloned = admin_api.post(
        f"{API_PREFIX}/experiments/{key}/clone", json=examples[("/experiments/{key}/clone", "post")]
    )
    assert cloned.status_code == 201
    assert_matches_openapi(cloned)


def test_checker_rejects_a_response_that_breaks_the_document(admin_api):
    response = admin_api.get(f"{API_PREFIX}/experiments")
    assert_matches_openapi(response)
    response.set_data(b'{"items": [{"key": 1}], "page": 1, "per_page": 50, "total": 1}')
    with pytest.raises(SchemaError):
        assert_matches_openapi(response)


def test_checker_rejects_an_undocumented_status(admin_api):
    response = admin_api.get(f"{API_PREFIX}/experiments")
    response.status_code = 418
    with pytest.raises(AssertionError, match="does not document status 418"):
        assert_matches_openapi(response)


def test_checker_rejects_an_undocumented_path(client):
    response = client.get(f"{API_PREFIX}/no-such-thing")
    with pytest.raises(AssertionError, match="no documented path"):
        assert_matches_openapi(response)
