"""What the sync client sends: URLs, headers, bodies, timeouts; and its resources and lifetime."""

from __future__ import annotations

import logging

import httpx
import pytest
import respx
from client_helpers import API, BASE, chat_completion_body, completion_body, sent_json
from ziggurat import Client, NotFoundError
from ziggurat._params import CHAT_COMPLETION_PARAM_NAMES, COMPLETION_PARAM_NAMES
from ziggurat.types import ChatMessage, HealthStatus, StreamOptions
from ziggurat_core.protocol import ChatCompletionRequest, CompletionRequest

MESSAGES = [{"role": "user", "content": "hi"}]



# -- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        "http://testserver",
        "http://testserver/",
        "http://testserver/v1",
        "http://testserver/v1/",
        "  http://testserver/v1  ",
    ],
)
def test_v1_prefix_is_added_once_whether_or_not_typed(base_url: str) -> None:
    with respx.mock(assert_all_called=True) as router:
        chat = router.post("http://testserver/v1/chat/completions").respond(
            200, json=chat_completion_body()
        )
        health = router.get("http://testserver/health").respond(200, json={"status": "ok"})
        client = Client(base_url=base_url)
        client.chat.completions.create("tiny", MESSAGES)
        client.health()
    assert client.base_url == "http://testserver/v1"
    assert chat.call_count == 1 and health.call_count == 1


def test_path_prefix_in_base_url_is_kept() -> None:
    with respx.mock(assert_all_called=True) as router:
        router.get("https://gw.example.com/llm/v1/models").respond(200, json={"data": []})
        router.get("https://gw.example.com/llm/health").respond(200, json={"status": "ok"})
        client = Client(base_url="https://gw.example.com/llm/v1")
        client.models.list()
        client.health()


@pytest.mark.parametrize("bad_url", ["testserver:8000", "ftp://testserver", "http://"])
def test_invalid_base_url_raises_value_error(bad_url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        Client(base_url=bad_url)


def test_base_url_and_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZIGGURAT_BASE_URL", "http://envhost:9000/v1")
    monkeypatch.setenv("ZIGGURAT_API_KEY", "env-key")
    with respx.mock() as router:
        route = router.get("http://envhost:9000/v1/models").respond(200, json={"data": []})
        Client().models.list()
    assert route.calls.last.request.headers["Authorization"] == "Bearer env-key"


def test_explicit_arguments_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZIGGURAT_BASE_URL", "http://envhost:9000")
    monkeypatch.setenv("ZIGGURAT_API_KEY", "env-key")
    client = Client(base_url="http://other:1234", api_key="arg-key")
    assert client.base_url == "http://other:1234/v1"
    assert client.api_key == "arg-key"


def test_default_base_url() -> None:
    assert Client().base_url == "http://localhost:8000/v1"


def test_model_ids_with_slashes_and_spaces_are_encoded() -> None:
    model = {"id": "org/model name", "object": "model"}
    with respx.mock(base_url=API) as router:
        route = router.get(url__regex=r"/v1/models/").respond(200, json=model)
        assert Client(base_url=BASE).models.get("org/model name").id == "org/model name"
    assert route.calls.last.request.url.raw_path == b"/v1/models/org/model%20name"


def test_empty_model_id_is_rejected() -> None:
    with pytest.raises(ValueError, match="model_id"):
        Client(base_url=BASE).models.get("")


# -- headers --------------------------------------------------------------------------------


def test_default_headers() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").respond(200, json=chat_completion_body())
        Client(base_url=BASE, api_key="sk-1").chat.completions.create("tiny", MESSAGES)
    headers = route.calls.last.request.headers
    assert headers["Authorization"] == "Bearer sk-1"
    assert headers["Accept"] == "application/json"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("ziggurat-python/")
    assert headers["X-Request-Id"].startswith("req_")
    assert headers["X-Ziggurat-Attempt"] == "1"


def test_no_authorization_header_without_api_key() -> None:
    with respx.mock(base_url=API) as router:
        route = router.get("/models").respond(200, json={"data": []})
        Client(base_url=BASE).models.list()
    assert "Authorization" not in route.calls.last.request.headers


def test_user_headers_and_extra_headers_layering() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").respond(200, json=chat_completion_body())
        client = Client(
            base_url=BASE, api_key="sk-1", headers={"X-Team": "search", "X-Env": "prod"}
        )
        client.chat.completions.create(
            "tiny",
            MESSAGES,
            extra_headers={"X-Env": "staging", "X-Trace": "t-1", "Authorization": None},
        )
    headers = route.calls.last.request.headers
    assert headers["X-Team"] == "search"
    assert headers["X-Env"] == "staging"  # per-call wins over client headers
    assert headers["X-Trace"] == "t-1"
    assert "Authorization" not in headers  # a None value removes the header


def test_header_overrides_ignore_case() -> None:
    with respx.mock(base_url=API) as router:
        route = router.get("/models").respond(200, json={"data": []})
        client = Client(base_url=BASE, api_key="sk-1", headers={"user-agent": "my-app/2"})
        client.models.list(timeout=None)
        client.with_options(headers={"AUTHORIZATION": "Basic abc"}).models.list()
    first, second = (call.request.headers for call in route.calls)
    assert first.get_list("User-Agent") == ["my-app/2"]
    assert second.get_list("Authorization") == ["Basic abc"]


def test_credentials_in_the_url_stay_out_of_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ziggurat")
    with respx.mock() as router:
        router.get(url__regex=r"/v1/models$").respond(200, json={"data": []})
        Client(base_url="http://alice:pw-secret@testserver").models.list()
    logged = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("ziggurat"))
    assert "testserver/v1/models" in logged
    assert "pw-secret" not in logged


def test_callers_cannot_forge_the_attempt_counter() -> None:
    with respx.mock(base_url=API) as router:
        route = router.get("/models").respond(200, json={"data": []})
        Client(base_url=BASE, headers={"X-Ziggurat-Attempt": "99"}).models.list()
    assert route.calls.last.request.headers.get_list("X-Ziggurat-Attempt") == ["1"]


def test_stream_requests_accept_event_stream() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/completions").respond(200, content=b"data: [DONE]\n\n")
        list(Client(base_url=BASE).completions.create("tiny", "Hi", stream=True))
    assert route.calls.last.request.headers["Accept"] == "text/event-stream"
    assert sent_json(route)["stream"] is True


# -- bodies ---------------------------------------------------------------------------------


def test_chat_body_sends_given_parameters_and_drops_none() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").respond(200, json=chat_completion_body())
        Client(base_url=BASE).chat.completions.create(
            "tiny",
            [ChatMessage(role="system", content="Be brief."), {"role": "user", "content": "hi"}],
            max_tokens=16,
            max_completion_tokens=12,
            temperature=0.0,
            top_p=0.9,
            top_k=40,
            min_p=0.05,
            frequency_penalty=0.1,
            presence_penalty=0.2,
            repetition_penalty=1.1,
            stop=("\n\n", "END"),
            seed=7,
            n=2,
            logprobs=True,
            top_logprobs=3,
            logit_bias={"50256": -100.0},
            user="u-1",
            ignore_eos=False,
            min_tokens=2,
            stop_token_ids=[2],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            tool_choice="auto",
            add_generation_prompt=True,
            stream_options=None,
        )
    assert sent_json(route) == {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ],
        "max_tokens": 16,
        "max_completion_tokens": 12,
        "temperature": 0.0,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
        "repetition_penalty": 1.1,
        "stop": ["\n\n", "END"],
        "seed": 7,
        "n": 2,
        "logprobs": True,
        "top_logprobs": 3,
        "logit_bias": {"50256": -100.0},
        "user": "u-1",
        "ignore_eos": False,
        "min_tokens": 2,
        "stop_token_ids": [2],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "auto",
        "add_generation_prompt": True,
    }


def test_completion_body_and_extra_body() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/completions").respond(200, json=completion_body())
        Client(base_url=BASE).completions.create(
            "tiny",
            [1, 2, 3],
            echo=True,
            logprobs=2,
            max_tokens=None,
            stream_options=StreamOptions(include_usage=True),
            extra_body={"guided_choice": ["a", "b"], "echo": False},
        )
    assert sent_json(route) == {
        "model": "tiny",
        "prompt": [1, 2, 3],
        "echo": False,  # extra_body is merged last and wins
        "logprobs": 2,
        "stream_options": {"include_usage": True},
        "guided_choice": ["a", "b"],
    }


def test_unknown_keyword_argument_is_a_type_error_and_sends_nothing() -> None:
    with respx.mock(base_url=API, assert_all_called=False) as router:
        route = router.post("/chat/completions").respond(200, json=chat_completion_body())
        with pytest.raises(TypeError, match="tempreature"):
            Client(base_url=BASE).chat.completions.create("tiny", MESSAGES, tempreature=0.5)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="echo"):
            Client(base_url=BASE).chat.completions.create("tiny", MESSAGES, echo=True)  # type: ignore[call-overload]
    assert route.call_count == 0


def test_keyword_parameters_are_the_request_models_fields() -> None:
    # The typed keyword arguments mirror the protocol's request models (the server validates
    # with those): a field added to one side only fails here. model, the messages or prompt,
    # and stream are the create methods' own arguments.
    own_arguments = {"model", "stream"}
    chat_fields = set(ChatCompletionRequest.model_fields) - own_arguments - {"messages"}
    completion_fields = set(CompletionRequest.model_fields) - own_arguments - {"prompt"}
    assert set(CHAT_COMPLETION_PARAM_NAMES) == chat_fields
    assert set(COMPLETION_PARAM_NAMES) == completion_fields


def test_messages_as_a_string_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="messages"):
        Client(base_url=BASE).chat.completions.create("tiny", "hi")  # type: ignore[arg-type]


# -- timeouts -------------------------------------------------------------------------------


def test_client_timeout_and_per_call_timeout_reach_the_request() -> None:
    with respx.mock(base_url=API) as router:
        route = router.get("/models").respond(200, json={"data": []})
        client = Client(base_url=BASE, timeout=12.0)
        client.models.list()
        client_default = route.calls.last.request.extensions["timeout"]
        client.models.list(timeout=2.5)
        per_call = route.calls.last.request.extensions["timeout"]
        client.models.list(timeout=httpx.Timeout(4.0, connect=1.0))
        fine_grained = route.calls.last.request.extensions["timeout"]
    assert client_default == httpx.Timeout(12.0).as_dict()
    assert per_call == httpx.Timeout(2.5).as_dict()
    assert fine_grained["connect"] == 1.0 and fine_grained["read"] == 4.0


def test_chat_create_accepts_per_call_timeout() -> None:
    with respx.mock(base_url=API) as router:
        route = router.post("/chat/completions").respond(200, json=chat_completion_body())
        Client(base_url=BASE).chat.completions.create("tiny", MESSAGES, timeout=1.5)
    assert route.calls.last.request.extensions["timeout"]["read"] == 1.5
    assert "timeout" not in sent_json(route)


# -- resources ------------------------------------------------------------------------------


def test_models_info_and_health() -> None:
    models = {
        "object": "list",
        "data": [{"id": "smollm2", "object": "model", "created": 1, "owned_by": "ziggurat"}],
    }
    info = {"version": "0.1.0", "models": ["smollm2"], "uptime_s": 3.5, "future_field": 1}
    with respx.mock() as router:
        router.get(f"{API}/models").respond(200, json=models)
        router.get(f"{API}/models/smollm2").respond(200, json=models["data"][0])
        router.get(f"{API}/info").respond(200, json=info)
        router.get(f"{BASE}/health").respond(200, json={"status": "ok", "model": "smollm2"})
        client = Client(base_url=BASE)
        assert [model.id for model in client.models.list().data] == ["smollm2"]
        assert client.models.get("smollm2").owned_by == "ziggurat"
        server_info = client.info()
        health = client.health()
    assert server_info.models == ["smollm2"]
    assert server_info.model_extra == {"future_field": 1}
    assert (health.status, health.model) == ("ok", "smollm2")


def test_health_returns_loading_status_from_503_without_retrying(sleeps: list[float]) -> None:
    with respx.mock() as router:
        route = router.get(f"{BASE}/health").respond(503, json={"status": "loading"})
        health = Client(base_url=BASE).health()
    assert health == HealthStatus(status="loading")
    assert route.call_count == 1
    assert sleeps == []


def test_unknown_model_raises_not_found() -> None:
    with respx.mock(base_url=API) as router:
        router.get("/models/missing").respond(
            404, json={"error": {"message": "The model `missing` does not exist."}}
        )
        with pytest.raises(NotFoundError, match="does not exist"):
            Client(base_url=BASE).models.get("missing")


# -- options and lifetime -------------------------------------------------------------------


def test_with_options_copies_settings_and_shares_the_pool() -> None:
    client = Client(base_url=BASE, api_key="k1", timeout=5.0, headers={"X-A": "1"})
    copy = client.with_options(api_key="k2", headers={"X-B": "2", "x-a": "3"})
    assert copy.api_key == "k2" and client.api_key == "k1"
    assert copy.timeout == 5.0
    assert copy.base_url == client.base_url
    assert copy.custom_headers == {"X-B": "2", "x-a": "3"}  # merged, ignoring case
    assert client.custom_headers == {"X-A": "1"}
    assert copy._http_client is client._http_client
    copy.close()
    assert not client.is_closed  # the copy does not own the shared pool
    client.close()
    assert client.is_closed


def test_context_manager_closes_its_own_pool() -> None:
    with Client(base_url=BASE) as client:
        assert not client.is_closed
    assert client.is_closed


def test_callers_http_client_is_used_and_left_open() -> None:
    http_client = httpx.Client(headers={"X-From-Pool": "yes"})
    with respx.mock(base_url=API) as router:
        route = router.get("/models").respond(200, json={"data": []})
        with Client(base_url=BASE, http_client=http_client) as client:
            client.models.list()
    assert route.call_count == 1
    assert not http_client.is_closed
    http_client.close()

