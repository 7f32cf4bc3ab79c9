"""Health, models, info, tokenizer and metrics endpoints of the real server process."""

from __future__ import annotations

import httpx
import pytest
import ziggurat_server
from fixtures_models import TinyModel
from server_helpers import TINY_NUM_KV_BLOCKS, metric_value, render_chatml
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def test_health_ok(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["model"] == "tiny"
    assert isinstance(body["devices"], list) and body["devices"]


def test_models_list_and_retrieve(client: httpx.Client, tiny_model: TinyModel) -> None:
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    [card] = listing["data"]
    reference = AutoModelForCausalLM.from_pretrained(tiny_model.hf_dir)
    assert card["id"] == "tiny"
    assert card["object"] == "model"
    assert isinstance(card["created"], int) and card["owned_by"]
    assert card["context_length"] == tiny_model.config.max_position_embeddings
    assert card["parameter_count"] == reference.num_parameters()
    assert card["format"] == "gguf"
    assert client.get("/v1/models/tiny").json() == card


def test_info_reports_model_memory_and_settings(client: httpx.Client,
                                               tiny_model: TinyModel) -> None:
    info = client.get("/v1/info").json()
    assert info["version"] == ziggurat_server.__version__
    assert info["models"] == ["tiny"]
    assert info["uptime_s"] > 0
    config = tiny_model.config
    # K and V, per block: block_size tokens x kv heads x head_dim float32 values, every layer.
    block_bytes = 2 * 16 * config.num_key_value_heads * config.head_dim * 4 * config.num_hidden_layers
    memory = info["memory"]
    assert memory["kv_cache_bytes"] == TINY_NUM_KV_BLOCKS * block_bytes
    assert memory["kv_blocks_total"] == TINY_NUM_KV_BLOCKS
    assert memory["total_bytes"] > memory["used_bytes"] > 0
    assert info["engine"]["config"]["max_num_seqs"] == 64
    # Unset, the prefill cap beside decodes resolves for the device: the CPU's default.
    assert info["engine"]["config"]["max_prefill_tokens_while_decoding"] == 64
    assert info["server"]["max_prefill_tokens_while_decoding"] is None
    # The pacing of that prompt work likewise: on for a server on CPU.
    assert info["engine"]["config"]["max_decode_slowdown"] == 0.25
    assert info["server"]["max_decode_slowdown"] is None
    # The model runs with the engine thread's OpenMP team, one thread fewer while the host is
    # crowded (--adaptive-threads, on by default).
    assert info["engine"]["config"]["adaptive_threads"] is True
    stats = info["engine"]["stats"]
    assert stats["cpu_threads"] >= 1 and stats["cpu_thread_yields"] >= 0
    assert info["engine"]["max_model_len"] == config.max_position_embeddings
    # The tiny model is a float32 GGUF: "auto" keeps float linear layers and a float32 cache.
    # The kernel variant depends on this CPU (pinned with a forced one in test_server_cpu_isa.py).
    resolved = dict(info["engine"]["resolved"])
    assert resolved.pop("cpu_isa") in ("avx512vnni", "avx2", "neon", "scalar")
    assert resolved == {"engine_device": "cpu", "dtype": "float32", "attention_backend": "torch",
                        "quantization": "none", "kv_cache_dtype": "float32",
                        "memory_profile": None,  # the KV cache is profiled on CUDA only
                        "tensor_parallel_size": 1}
    assert info["server"]["api_key"] is None


def test_gpu_info_is_honest(client: httpx.Client) -> None:
    info = client.get("/v1/gpu/info").json()
    # The engine runs on the CPU: it reports (and touches) no GPU, even where the host has one.
    assert info["devices"] == []
    assert info["cpu"]["cores"] >= 1
    assert info["cpu"]["total_memory"] > 0


def test_tokenize_prompt_and_messages(client: httpx.Client,
                                      reference_tokenizer: Tokenizer) -> None:
    text = "The quick brown fox jumps"
    body = client.post("/tokenize", json={"prompt": text}).json()
    assert body["tokens"] == reference_tokenizer.encode(text).ids
    assert body["count"] == len(body["tokens"])
    assert body["max_model_len"] == 256
    messages = [{"role": "user", "content": "Hi"}]
    chat = client.post("/tokenize", json={"messages": messages}).json()
    assert chat["tokens"] == reference_tokenizer.encode(render_chatml(messages)).ids


def test_detokenize_round_trip(client: httpx.Client, reference_tokenizer: Tokenizer) -> None:
    ids = reference_tokenizer.encode("Hello world! 0 1 2").ids
    assert client.post("/detokenize", json={"tokens": ids}).json() == {
        "prompt": "Hello world! 0 1 2"}
    bad = client.post("/detokenize", json={"tokens": [1, 10**6]})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "tokens"


@pytest.mark.parametrize("body", [{}, {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}])
def test_tokenize_needs_exactly_one_input(client: httpx.Client, body: dict[str, object]) -> None:
    assert client.post("/tokenize", json=body).status_code == 400


METRIC_NAMES = (
    "ziggurat_http_requests_total", "ziggurat_prompt_tokens_total",
    "ziggurat_generation_tokens_total", "ziggurat_time_to_first_token_seconds_bucket",
    "ziggurat_inter_token_latency_seconds_bucket", "ziggurat_num_requests_running",
    "ziggurat_num_requests_waiting", "ziggurat_kv_cache_usage_ratio",
    "ziggurat_prefix_cache_hit_rate",
)


def test_metrics_count_a_request(client: httpx.Client) -> None:
    before = client.get("/metrics").text
    prompt = [11, 12, 13, 14, 15]
    body = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 7,
                                                "ignore_eos": True}).json()
    assert body["usage"]["completion_tokens"] == 7
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    for name in METRIC_NAMES:
        assert f"\n{name}" in after, name

    def delta(name: str) -> float:
        return metric_value(after, name) - metric_value(before, name)

    assert delta("ziggurat_prompt_tokens_total") == len(prompt)
    assert delta("ziggurat_generation_tokens_total") == 7
    assert delta("ziggurat_time_to_first_token_seconds_count") == 1
    assert delta("ziggurat_inter_token_latency_seconds_count") == 6
    assert delta('ziggurat_http_requests_total{route="/v1/completions",status="200"}') == 1
    assert delta('ziggurat_request_finished_total{finish_reason="length"}') == 1
    assert metric_value(after, "ziggurat_num_requests_running") == 0
    assert metric_value(after, "ziggurat_kv_cache_blocks_total") == TINY_NUM_KV_BLOCKS


def test_metrics_count_errors_by_status(client: httpx.Client) -> None:
    name = 'ziggurat_http_requests_total{route="/v1/completions",status="400"}'
    aborted = 'ziggurat_request_finished_total{finish_reason="abort"}'
    before = client.get("/metrics").text
    client.post("/v1/completions", json={"prompt": "x", "suffix": "y"})
    client.post("/v1/completions", json={"prompt": [3] * 300})  # refused by the engine
    after = client.get("/metrics").text
    assert metric_value(after, name) == metric_value(before, name) + 2
    assert metric_value(after, aborted) == metric_value(before, aborted)  # refused, not aborted
