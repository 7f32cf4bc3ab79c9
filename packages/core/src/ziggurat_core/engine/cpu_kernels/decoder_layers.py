"""A Llama-family decoder's layers in one C call (`csrc/decoder_layers.c`): the W8A8 path of a
step, bitwise the same as running `LlamaDecoderLayer.forward` layer by layer on the kernels it
composes, without the Python per layer."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .build import KernelError, check_float_vectors, library_wrapper, wrapper_of
from .int8_gemm import BoundInt8Linear


class _Int8LinearWeights(ctypes.Structure):
    _fields_ = [
        ("packed", ctypes.c_void_p),
        ("offset", ctypes.c_void_p),
        ("col_scale", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("inv_smoothing", ctypes.c_void_p),
        ("in_features", ctypes.c_int64),
        ("out_features", ctypes.c_int64),
    ]


class _DecoderLayerWeights(ctypes.Structure):
    _fields_ = [
        ("input_norm", ctypes.c_void_p),
        ("post_attention_norm", ctypes.c_void_p),
        ("input_eps", ctypes.c_float),
        ("post_attention_eps", ctypes.c_float),
        ("qkv", _Int8LinearWeights),
        ("o", _Int8LinearWeights),
        ("gate_up", _Int8LinearWeights),
        ("down", _Int8LinearWeights),
        ("k_cache", ctypes.c_void_p),
        ("v_cache", ctypes.c_void_p),
    ]


@dataclass(frozen=True)
class DecoderLayerParts:
    """One pre-norm decoder layer: RMSNorm weights [hidden] float32 and the four int8 linear
    layers bound to the same library (`Int8Gemm.bind`)."""

    input_norm: torch.Tensor
    input_eps: float
    post_attention_norm: torch.Tensor
    post_attention_eps: float
    qkv: BoundInt8Linear
    o: BoundInt8Linear
    gate_up: BoundInt8Linear
    down: BoundInt8Linear


@dataclass(frozen=True)
class DecoderShape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int


def _linear_fields(linear: BoundInt8Linear) -> _Int8LinearWeights:
    packed, offset, col_scale, bias, inv_smoothing = linear.pointers()
    return _Int8LinearWeights(
        packed, offset, col_scale, bias, inv_smoothing, linear.in_features, linear.out_features
    )


class BoundDecoderLayers:
    """The layers' weights checked once and held as one C array (see `DecoderLayersKernel.bind`).
    Holds a workspace reused by every call: one instance per model, not shared between threads."""

    def __init__(
        self, kernel: DecoderLayersKernel, layers: Sequence[DecoderLayerParts], shape: DecoderShape
    ) -> None:
        if shape.heads % shape.kv_heads:
            raise KernelError(f"{shape.heads} heads are not a multiple of {shape.kv_heads} kv heads")
        q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        expected = {
            "qkv": (shape.hidden, q + 2 * kv),
            "o": (q, shape.hidden),
            "gate_up": (shape.hidden, 2 * shape.intermediate),
            "down": (shape.intermediate, shape.hidden),
        }
        for i, layer in enumerate(layers):
            check_float_vectors(
                f"decoder layer {i}",
                (
                    ("input_norm", layer.input_norm, shape.hidden),
                    ("post_attention_norm", layer.post_attention_norm, shape.hidden),
                ),
            )
            for name, (k, n) in expected.items():
                linear: BoundInt8Linear = getattr(layer, name)
                if (linear.in_features, linear.out_features) != (k, n) or (
                    linear.library is not kernel.library
                ):
                    raise KernelError(
                        f"decoder layer {i}: {name} must be a {k}->{n} int8 linear of the "
                        f"{kernel.isa} library, got {linear.in_features}->{linear.out_features} "
                        f"({linear.isa})"
                    )
        self.shape = shape
        self._kernel = kernel
        self.layers = tuple(layers)  # keeps every pointer below valid
        self._array = (_DecoderLayerWeights * len(layers))()
        for entry, layer in zip(self._array, layers, strict=True):
            entry.input_norm = layer.input_norm.data_ptr()
            entry.post_attention_norm = layer.post_attention_norm.data_ptr()
            entry.input_eps = layer.input_eps
            entry.post_attention_eps = layer.post_attention_eps
            entry.qkv = _linear_fields(layer.qkv)
            entry.o = _linear_fields(layer.o)
            entry.gate_up = _linear_fields(layer.gate_up)
            entry.down = _linear_fields(layer.down)
        self._caches: list[torch.Tensor] | None = None
        self._workspace = torch.empty(0, dtype=torch.float32)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _bind_caches(self, kv_caches: list[torch.Tensor]) -> None:
        """Point every layer at its cache [2, num_blocks, block_size, kv_heads, head_dim]; the
        same list (the model runner allocates it once) is bound once."""
        if kv_caches is self._caches:
            return
        shape = self.shape
        if len(kv_caches) != self.num_layers:
            raise KernelError(f"{len(kv_caches)} KV caches for {self.num_layers} layers")
        for entry, cache in zip(self._array, kv_caches, strict=True):
            if (
                cache.dim() != 5
                or tuple(cache.shape[3:]) != (shape.kv_heads, shape.head_dim)
                or cache.dtype not in (torch.float32, torch.float16)
                or cache.dtype != kv_caches[0].dtype
                or cache.shape != kv_caches[0].shape
                or not cache.is_contiguous()
                or cache.device.type != "cpu"
            ):
                raise KernelError(
                    "KV caches must be contiguous float32 or float16 CPU tensors [2, blocks, "
                    f"block_size, {shape.kv_heads}, {shape.head_dim}], all alike"
                )
            entry.k_cache = cache[0].data_ptr()
            entry.v_cache = cache[1].data_ptr()
        self._caches = kv_caches

    def __call__(
        self,
        hidden: torch.Tensor,  # [tokens, hidden] float32 embeddings; overwritten
        cos: torch.Tensor,  # tokens * head_dim / 2 contiguous float32 values
        sin: torch.Tensor,
        kv_caches: list[torch.Tensor],
        slot_mapping: torch.Tensor,  # [tokens] int64
        block_tables: torch.Tensor,  # [rows, max_blocks] int64
        context_lens: torch.Tensor,  # [rows] int64
        token_rows: torch.Tensor,  # [rows] int64
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the last layer's MLP output, the residual stream before it), as the Python layers
        leave them for the final norm. The MLP output is `hidden` itself; the residual is a
        view of the workspace, valid until the next call."""
        shape = self.shape
        if (
            hidden.dtype != torch.float32
            or hidden.dim() != 2
            or hidden.shape[1] != shape.hidden
            or not hidden.is_contiguous()
            or hidden.device.type != "cpu"
        ):
            raise KernelError(f"decoder layers: hidden must be contiguous float32 [tokens, {shape.hidden}] on CPU")
        tokens = hidden.shape[0]
        check_float_vectors(
            "decoder layers",
            (("cos", cos, tokens * shape.head_dim // 2), ("sin", sin, tokens * shape.head_dim // 2)),
        )
        for name, t, size in (
            ("slot_mapping", slot_mapping, tokens),
            ("block_tables", block_tables, block_tables.numel()),
            ("context_lens", context_lens, block_tables.shape[0]),
            ("token_rows", token_rows, block_tables.shape[0]),
        ):
            if t.dtype != torch.int64 or not t.is_contiguous() or t.numel() != size:
                raise KernelError(f"decoder layers: {name} must be {size} contiguous int64 values")
        self._bind_caches(kv_caches)
        if tokens == 0:
            return hidden, torch.empty_like(hidden)
        scratch = self._kernel.workspace_floats(tokens, shape)
        needed = scratch + tokens * shape.hidden
        if self._workspace.numel() < needed:
            self._workspace = torch.empty(needed, dtype=torch.float32)
        residual = self._workspace[: tokens * shape.hidden].view(tokens, shape.hidden)
        cache = kv_caches[0]
        status = self._kernel.fn(
            ctypes.byref(self._array),
            self.num_layers,
            tokens,
            shape.hidden,
            shape.heads,
            shape.kv_heads,
            shape.head_dim,
            shape.intermediate,
            hidden.data_ptr(),
            residual.data_ptr(),
            cos.data_ptr(),
            sin.data_ptr(),
            slot_mapping.data_ptr(),
            block_tables.data_ptr(),
            context_lens.data_ptr(),
            token_rows.data_ptr(),
            block_tables.shape[0],
            block_tables.shape[1],
            cache.shape[2],
            scale,
            int(cache.dtype == torch.float16),
            self._workspace.data_ptr() + 4 * tokens * shape.hidden,
            torch.get_num_threads(),
        )
        if status == 3:
            raise KernelError("this build of the kernels has no float16 support")
        if status != 0:
            raise KernelError(f"decoder layers: a kernel failed (status {status})")
        return hidden, residual


class DecoderLayersKernel:
    """`decoder_layers_f32` of the loaded library."""

    def __init__(self, library: ctypes.CDLL) -> None:
        isa = library.ziggurat_cpu_isa
        isa.restype = ctypes.c_char_p
        self.isa = str(isa().decode())
        self.library = library
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        fn = library.decoder_layers_f32
        fn.restype = ctypes.c_int
        fn.argtypes = [
            p, i64, i64, i64, i64, i64, i64, i64,  # layers, count, tokens, shape
            p, p, p, p,  # a, b, cos, sin
            p, p, p, p, i64, i64, i64,  # slot_mapping, tables, lens, rows, rows, width, block
            ctypes.c_float, ctypes.c_int, p, ctypes.c_int,  # scale, half, workspace, threads
        ]  # fmt: skip
        self.fn = fn
        floats = library.decoder_layers_workspace_floats
        floats.restype = ctypes.c_int64
        floats.argtypes = [i64] * 6
        self._workspace_floats = floats

    def workspace_floats(self, tokens: int, shape: DecoderShape) -> int:
        return int(
            self._workspace_floats(
                tokens, shape.hidden, shape.heads, shape.kv_heads, shape.head_dim, shape.intermediate
            )
        )

    def bind(self, layers: Sequence[DecoderLayerParts], shape: DecoderShape) -> BoundDecoderLayers:
        return BoundDecoderLayers(self, layers, shape)


def load_decoder_layers_kernel() -> DecoderLayersKernel | None:
    """The kernel, or None where the CPU kernels cannot be built (see `build.py`)."""
    return library_wrapper(DecoderLayersKernel)


def decoder_layers_kernel_for(linear: BoundInt8Linear) -> DecoderLayersKernel:
    """The kernel of the library that packed `linear`'s weight: the one its layers bind to."""
    return wrapper_of(linear.library, DecoderLayersKernel)
