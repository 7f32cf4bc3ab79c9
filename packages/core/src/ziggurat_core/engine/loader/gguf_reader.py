"""GGUF checkpoints (llama.cpp's format), read with the `gguf` package and dequantised to torch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from .checkpoint import Checkpoint
from .errors import CheckpointError
from .gguf_config import gguf_architecture, model_config_from_gguf
from .gguf_names import NON_WEIGHT_TENSORS, hf_tensor_name, unpermute_qk_rows

GGUF_MAGIC = b"GGUF"
_ROPE_FREQS = "rope_freqs.weight"
_FLOAT_TYPES = frozenset(
    {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16}
)


def is_gguf_file(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(4) == GGUF_MAGIC
    except OSError:
        return False


class GGUFCheckpoint(Checkpoint):
    format = "gguf"

    def __init__(self, path: Path, dtype: torch.dtype = torch.float32) -> None:
        self.path = path  # error messages below need it before the base class sets the rest
        self._reader = _open_reader(path)
        self._metadata = read_metadata(self._reader, path)
        self._tensors = {tensor.name: tensor for tensor in self._reader.tensors}
        gguf_architecture(path, self._metadata)  # fail on the architecture before tensor checks
        embedding = self._tensors.get("token_embd.weight")
        if embedding is None:
            raise CheckpointError(f"{path}: tensor token_embd.weight is missing")
        rope_freqs = self._tensors.get(_ROPE_FREQS)
        config = model_config_from_gguf(
            path,
            self._metadata,
            vocab_size=int(embedding.data.shape[0]),
            has_output_weight="output.weight" in self._tensors,
            has_qkv_bias="blk.0.attn_q.bias" in self._tensors,
            rope_freq_factors=None if rope_freqs is None else self._dequantize(rope_freqs).tolist(),
        )
        super().__init__(path, config, dtype)

    def gguf_metadata(self) -> dict[str, Any]:
        return self._metadata

    @property
    def weights_quantized(self) -> bool:
        return any(
            tensor.name.startswith("blk.") and tensor.tensor_type not in _FLOAT_TYPES
            for tensor in self._reader.tensors
        )

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        for tensor in self._reader.tensors:
            if tensor.name in NON_WEIGHT_TENSORS:
                continue
            hf_name = hf_tensor_name(tensor.name)
            if hf_name is None:
                raise CheckpointError(f"{self.path}: unknown GGUF tensor {tensor.name!r}")
            array = self._dequantize(tensor)
            array = self._undo_qk_permutation(hf_name, array)
            if not array.flags.writeable:  # a view of the read-only file mapping
                array = array.copy()
            yield hf_name, torch.from_numpy(array).to(self.dtype)

    def _dequantize(self, tensor: gguf.ReaderTensor) -> np.ndarray:
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as exc:
            raise CheckpointError(
                f"{self.path}: tensor {tensor.name!r} has unsupported type {tensor.tensor_type.name}"
            ) from exc
        expected_shape = tuple(int(d) for d in reversed(tensor.shape))  # ggml lists dims innermost first
        if array.shape != expected_shape:
            raise CheckpointError(
                f"{self.path}: tensor {tensor.name!r} decodes to shape {array.shape}, header says {expected_shape}"
            )
        return array

    def _undo_qk_permutation(self, hf_name: str, array: np.ndarray) -> np.ndarray:
        config = self.model_config
        if config.architecture != "llama":  # qwen2 GGUFs keep the Hugging Face row order
            return array
        if ".self_attn.q_proj." in hf_name:
            return unpermute_qk_rows(array, config.num_attention_heads)
        if ".self_attn.k_proj." in hf_name:
            return unpermute_qk_rows(array, config.num_key_value_heads)
        return array


class _PlainArrayReader(gguf.GGUFReader):
    """GGUFReader over a plain ndarray view of the file mapping instead of the np.memmap itself.

    The reader slices its `data` several times per metadata item (hundreds of thousands of
    times for a 50k-token vocabulary), and every np.memmap slice runs a Python-level
    __array_finalize__; a plain view of the same read-only mapping skips it (figures in
    docs/benchmarks.md).
    """

    @property  # type: ignore[override]
    def data(self) -> np.ndarray:
        return self._plain_data

    @data.setter
    def data(self, mapping: np.ndarray) -> None:
        self._plain_data = np.asarray(mapping)  # drops the subclass, keeps the mapping alive


def _open_reader(path: Path) -> gguf.GGUFReader:
    try:
        return _PlainArrayReader(path)
    except (ValueError, IndexError, KeyError, OSError, UnicodeDecodeError) as exc:
        # A truncated file makes the reader index past the end of the mapping or fail to reshape.
        raise CheckpointError(f"{path}: not a readable GGUF file (truncated or corrupt): {exc}") from exc


def read_metadata(reader: gguf.GGUFReader, path: Path) -> dict[str, Any]:
    """All key/values of the file as plain Python values (strings decoded, arrays as lists): the
    one place GGUF metadata is decoded, by the reader's own `contents()`."""
    try:
        return {
            name: field.contents()
            for name, field in reader.fields.items()
            if not name.startswith("GGUF.")  # header counters the reader exposes as fields
        }
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: GGUF metadata holds a string that is not UTF-8: {exc}") from exc
