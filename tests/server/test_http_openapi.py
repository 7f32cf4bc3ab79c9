"""The OpenAPI document describes the API that runs: every status a route can answer, each
error with OpenAI's error schema, and no 422 (the server answers validation errors with 400)."""

from __future__ import annotations

from typing import Any

import httpx
from fixtures_models import TinyModel
from ziggurat_server.app import create_app
from ziggurat_server.settings import ServerSettings

# Written from the routes' behaviour (see docs/server.md, "Errors"), not from the document.
EXPECTED = {
    ("get", "/health"): {"200", "500", "503"},
    ("get", "/v1/models"): {"200", "500", "503"},
    ("get", "/v1/models/{model_id}"): {"200", "404", "500", "503"},
    ("post", "/v1/completions"): {"200", "400", "404", "413", "429", "500", "503"},
    ("post", "/v1/chat/completions"): {"200", "400", "404", "413", "429", "500", "503"},
    ("get", "/v1/info"): {"200", "500", "503"},
    ("get", "/v1/gpu/info"): {"200", "500", "503"},
    ("post", "/tokenize"): {"200", "400", "404", "413", "500", "503"},
    ("post", "/detokenize"): {"200", "400", "404", "413", "500", "503"},
    ("get", "/metrics"): {"200", "500"},
}
ERROR_REF = "#/components/schemas/ErrorResponse"


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method, path): operation for path, methods in document["paths"].items()
            for method, operation in methods.items()}


def test_every_route_documents_its_statuses_with_the_error_schema(client: httpx.Client) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    found = operations(document)
    assert set(found) == set(EXPECTED)
    for key, operation in found.items():
        responses = operation["responses"]
        assert set(responses) == EXPECTED[key], key
        for status, described in responses.items():
            assert described["description"], (key, status)
            if status.startswith(("4", "5")) and key != ("get", "/health"):
                schema = described["content"]["application/json"]["schema"]
                assert schema == {"$ref": ERROR_REF}, (key, status)
                if status in ("429", "503"):
                    assert "Retry-After" in described["headers"], (key, status)
    assert "422" not in response.text
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert set(schemas["ErrorResponse"]["properties"]) == {"error"}
    assert set(schemas["ErrorDetail"]["properties"]) == {"message", "type", "param", "code"}


def test_success_bodies_are_documented(client: httpx.Client) -> None:
    found = operations(client.get("/openapi.json").json())
    completions = found[("post", "/v1/completions")]["responses"]["200"]["content"]
    assert completions["application/json"]["schema"] == {"$ref": "#/components/schemas/Completion"}
    assert "text/event-stream" in completions
    chat = found[("post", "/v1/chat/completions")]["responses"]["200"]["content"]
    assert chat["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    health = found[("get", "/health")]["responses"]
    for status in ("200", "503"):
        assert health[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/HealthStatus"}
    metrics = found[("get", "/metrics")]["responses"]["200"]["content"]
    metrics_type = client.get("/metrics").headers["content-type"]
    assert list(metrics) == [metrics_type]


def test_with_an_api_key_every_route_but_health_documents_401(tiny_model: TinyModel) -> None:
    app = create_app(ServerSettings(model=str(tiny_model.gguf_path), api_key="s3cret"))
    for key, operation in operations(app.openapi()).items():
        expected = EXPECTED[key] | ({"401"} if key != ("get", "/health") else set())
        assert set(operation["responses"]) == expected, key
        if key != ("get", "/health"):
            unauthorised = operation["responses"]["401"]
            assert unauthorised["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
