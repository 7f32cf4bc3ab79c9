"""schemathesis hooks for checking this server (SCHEMATHESIS_HOOKS=tests/server/schemathesis_hooks.py;
see docs/server.md, "Checking the OpenAPI document")."""

from __future__ import annotations

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

# Constraints no JSON Schema can state: a value that must compile (a regex, a grammar, a JSON
# schema, a tool's parameters) or a rule between fields (min_tokens <= max_tokens, the prompt
# plus max_tokens within the context window, best_of == n, top_logprobs needs logprobs, a named
# tool that `tools` lists, legacy `functions` or `tools` but not both, one output constraint, a
# conversation the chat template accepts). A schema-valid request may break one of them; its
# 400 must then name the field. Written from the routes' checks (docs/server.md lists them).
CROSS_FIELD_PARAMS = frozenset({
    "guided_regex", "guided_grammar", "guided_json", "guided_choice", "structured_outputs", "response_format",
    "tools", "tool_choice", "functions", "function_call", "min_tokens", "max_tokens",
    "max_completion_tokens", "best_of", "top_logprobs", "echo", "suffix", "messages", "prompt",
})


def _error_param(response: schemathesis.Response) -> str:
    try:
        param = response.json()["error"]["param"]
    except (ValueError, KeyError, TypeError):
        return ""
    return param if isinstance(param, str) else ""


@schemathesis.check
def positive_data_accepted(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                           case: schemathesis.Case) -> bool | None:
    """schemathesis's "schema-valid request accepted" (run with it excluded), except for a 400
    that names a field whose constraint reaches beyond the schema (CROSS_FIELD_PARAMS)."""
    if response.status_code == 400 and _error_param(response).split(".")[0] in CROSS_FIELD_PARAMS:
        return None
    return positive_data_acceptance(ctx, response, case)
