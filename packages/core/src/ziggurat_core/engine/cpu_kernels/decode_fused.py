"""RoPE and the KV-cache write in one call for the attention layers (`csrc/decode_fused.c`; the
fused int8 linear layer of the same file is `Int8Gemm.bind`)."""

from __future__ import annotations

import ctypes

import torch

from .build import KernelError, check_float_vectors, library_wrapper


class DecodeFusedKernels:
    def __init__(self, library: ctypes.CDLL) -> None:
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        rope = library.rope_write_kv_f32
        rope.restype = ctypes.c_int
        rope.argtypes = [p, i64, i64, i64, i64, i64, p, p, p, p, p, p, ctypes.c_int, ctypes.c_int]
        self._rope_write_kv = rope

    def rope_write_kv(
        self,
        qkv: torch.Tensor,  # [tokens, (heads + 2 * kv_heads) * head_dim] float32, rows contiguous
        num_heads: int,
        cos: torch.Tensor,  # tokens * head_dim / 2 contiguous float32 values
        sin: torch.Tensor,
        slot_mapping: torch.Tensor,  # [tokens] int64
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, kv_heads, head_dim] float32/16
    ) -> torch.Tensor:
        """The rotated query heads [tokens, heads, head_dim]; the rotated keys and the values
        are stored in their cache slots. The same bits as `ElementwiseKernels.rotary` of the
        query and key views followed by `PagedAttentionKernel.write_kv`."""
        num_kv_heads, head_dim = kv_cache.shape[3], kv_cache.shape[4]
        tokens = qkv.shape[0]
        if (
            qkv.dtype != torch.float32
            or qkv.dim() != 2
            or qkv.stride(1) != 1
            or qkv.shape[1] != (num_heads + 2 * num_kv_heads) * head_dim
            or qkv.device.type != "cpu"
        ):
            raise KernelError(
                f"rope_write_kv: qkv must be float32 [tokens, {(num_heads + 2 * num_kv_heads) * head_dim}]"
                " on CPU with contiguous rows"
            )
        if kv_cache.dtype not in (torch.float32, torch.float16) or not kv_cache.is_contiguous():
            raise KernelError("rope_write_kv: kv_cache must be a contiguous float32 or float16 tensor")
        check_float_vectors(
            "rope_write_kv",
            (("cos", cos, tokens * head_dim // 2), ("sin", sin, tokens * head_dim // 2)),
        )
        if (
            slot_mapping.dtype != torch.int64
            or not slot_mapping.is_contiguous()
            or slot_mapping.numel() != tokens
        ):
            raise KernelError(f"rope_write_kv: slot_mapping must be {tokens} contiguous int64 values")
        query = torch.empty((tokens, num_heads, head_dim), dtype=torch.float32)
        status = self._rope_write_kv(
            qkv.data_ptr(),
            tokens,
            qkv.stride(0),
            num_heads,
            num_kv_heads,
            head_dim,
            cos.data_ptr(),
            sin.data_ptr(),
            query.data_ptr(),
            slot_mapping.data_ptr(),
            kv_cache[0].data_ptr(),
            kv_cache[1].data_ptr(),
            int(kv_cache.dtype == torch.float16),
            torch.get_num_threads(),
        )
        if status == 3:
            raise KernelError("this build of the kernels has no float16 support")
        if status != 0:
            raise KernelError(f"rope_write_kv: the kernel failed (status {status})")
        return query


def load_decode_fused_kernels() -> DecodeFusedKernels | None:
    """The kernels, or None where the CPU kernels cannot be built (see `build.py`)."""
    return library_wrapper(DecodeFusedKernels)
