"""schemathesis against the real server: every operation in /openapi.json, each test phase
(examples, coverage, fuzzing, stateful), positive and negative cases, all checks. A 5xx, an
undocumented status, a response off its schema or a schema-valid request refused fails the
test (docs/server.md, "Checking the OpenAPI document", runs it by hand with more examples)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
from fixtures_models import TINY_VOCAB_SIZE
from server_process import ServerProcess

HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
# Examples per operation: the whole run stays within a couple of minutes here.
MAX_EXAMPLES = 12
SEED = 20261130
# Generation runs up to the context window when max_tokens is absent; on a loaded machine that
# takes a while, and no response time is judged here (that is the benchmarks' job).
REQUEST_TIMEOUT_S = 120
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance",
          "negative_data_rejection", "missing_required_header", "unsupported_method",
          "allow_header_conformance", "use_after_free", "ensure_resource_availability",
          "ignored_auth", "object_level_authorization", "positive_data_accepted")


def schemathesis_command(base_url: str, max_examples: int) -> list[str]:
    return [sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json",
            # Every check but two: positive_data_accepted (the hooks) replaces
            # positive_data_acceptance, and response times are not judged here.
            "--checks", ",".join(CHECKS),
            "--max-examples", str(max_examples), "--seed", str(SEED),
            "--request-timeout", str(REQUEST_TIMEOUT_S), "--continue-on-failure", "--no-color"]


def test_the_api_matches_its_openapi_document(tiny_server: ServerProcess, tmp_path: Path) -> None:
    # In tmp_path: schemathesis keeps a cache of failures in its working directory.
    run = subprocess.run(schemathesis_command(tiny_server.base_url, MAX_EXAMPLES), cwd=tmp_path,
                         env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
                         capture_output=True, text=True, timeout=1200)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-15000:]


def test_the_document_bounds_token_ids_by_the_served_vocabulary(client: httpx.Client) -> None:
    """The model-specific bounds are in the document once the model has loaded."""
    document = client.get("/openapi.json").json()
    vocab_size = TINY_VOCAB_SIZE
    context = client.get("/v1/models/tiny").json()["context_length"]
    schemas = document["components"]["schemas"]
    tokens = schemas["DetokenizeRequest"]["properties"]["tokens"]["items"]
    assert (tokens["minimum"], tokens["maximum"]) == (0, vocab_size - 1)
    max_tokens = next(option for option in
                      schemas["ChatCompletionRequest"]["properties"]["max_tokens"]["anyOf"]
                      if option.get("type") == "integer")
    assert max_tokens["maximum"] == context - 1
    bias = next(option for option in
                schemas["CompletionRequest"]["properties"]["logit_bias"]["anyOf"]
                if option.get("type") == "object")
    assert bias["additionalProperties"] is False
    (pattern,) = bias["patternProperties"]
    accepted = [number for number in range(vocab_size + 50) if re.match(pattern, str(number))]
    assert accepted == list(range(vocab_size))
