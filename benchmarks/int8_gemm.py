"""The int8 GEMM kernel against float32 matmuls, for each projection of the default model.

Prints one JSON object, everything measured in one run so the ratios are fair:
  - for each projection shape of SmolLM2-135M (the fused ones `models/llama.py` runs) and each
    row count M: GOP/s of the int8 GEMM of the variant in use (`ZIGGURAT_CPU_ISA` selects it;
    activations already quantised, scales and bias applied) beside GFLOP/s of the float32
    matmul (torch's `F.linear`, and the oneDNN-packed weight the engine uses for float32);
    with `--int-mm` also `torch._int_mm` (int32 output, no epilogue), which is how the
    AVX-512 VNNI threshold in `layers/packed.py` is chosen;
  - with `--cold` the int8 GEMM cycles through enough copies of each weight to read it from
    memory on every call, as an engine step reads each layer's weights (the default re-reads one
    weight that stays in cache, which hides how well the kernel streams it);
  - the memory bandwidth of a large copy in the same run, the time to read the model's int8
    weights once at it (the bound of a decode step that streams every weight), and the time of
    one single-sequence decode step's int8 GEMMs over every layer's own weights beside it.

With `--step-rows`, the same whole-step GEMMs at those row counts too (a decode step of that
many sequences).

Usage: python benchmarks/int8_gemm.py [--rows 1 8 64 512 2048] [--int-mm] [--cold] [--seconds 0.5]
                                      [--step-rows 1 16 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from ziggurat_core.engine.cpu_kernels import PackedInt8Weight, cpu_isa, load_int8_gemm
from ziggurat_core.engine.layers.packed import OneDnnWeight

# (name, in_features K, out_features N, how many in the model): SmolLM2-135M, 30 layers, its
# q/k/v and gate/up projections fused as models/llama.py runs them; lm_head is tied to the
# embedding but packed as a Linear of its own.
LAYERS = 30
SHAPES = [
    ("qkv_proj", 576, 960, LAYERS),
    ("o_proj", 576, 576, LAYERS),
    ("gate_up_proj", 576, 3072, LAYERS),
    ("down_proj", 1536, 576, LAYERS),
    ("lm_head", 576, 49152, 1),
]


def best_seconds(fn: Callable[[], object], seconds: float) -> float:
    """Seconds of the fastest of the calls made in `seconds` (at least 3): on a shared host a
    call whose OpenMP team lost a core to another process measures the host, not the code."""
    fn()
    best, deadline, calls = float("inf"), time.perf_counter() + seconds, 0
    while calls < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        calls += 1
    return best


def memory_bandwidth(seconds: float) -> float:
    """Bytes/s of a 256 MiB copy (read + write), far beyond any cache."""
    src = torch.ones(64 * 2**20, dtype=torch.float32)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_seconds(lambda: dst.copy_(src), seconds)


# Bytes of weight copies a `--cold` measurement cycles through: beyond any CPU's caches.
COLD_BYTES = 256 * 2**20


def measure_shape(
    k: int, n: int, m: int, seconds: float, int_mm: bool, cold: bool
) -> dict[str, Any]:
    gemm = load_int8_gemm()
    assert gemm is not None, "the CPU kernels did not build"
    gen = torch.Generator().manual_seed(k * n + m)
    weight = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    qx = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen)
    if gemm.input_offset:
        qx = (qx.to(torch.int16) + gemm.input_offset).to(gemm.input_dtype)
    copies = -(-COLD_BYTES // (k * n)) if cold else 1
    packed = itertools.cycle([PackedInt8Weight(weight) for _ in range(copies)])
    row_scale, col_scale = torch.rand(m) + 0.5, torch.rand(n) + 0.5
    ops = 2 * m * k * n
    int8_s = best_seconds(lambda: gemm(qx, row_scale, next(packed), col_scale, None), seconds)
    w32, x32 = weight.float(), torch.randn(m, k, generator=gen)
    float_s = best_seconds(lambda: F.linear(x32, w32), seconds)
    onednn = OneDnnWeight(w32, None)
    onednn_s = best_seconds(lambda: onednn(x32), seconds)
    row: dict[str, Any] = {
        "m": m,
        "int8_gop_s": round(ops / int8_s / 1e9, 1),
        "float32_gflop_s": round(ops / float_s / 1e9, 1),
        "float32_onednn_gflop_s": round(ops / onednn_s / 1e9, 1),
    }
    if int_mm:
        signed = torch.randint(-127, 128, (max(m, 17), k), dtype=torch.int8, generator=gen)
        # _int_mm needs more than 16 rows: below that it is timed at 17.
        mm_s = best_seconds(lambda: torch._int_mm(signed, weight.t()), seconds)
        row["int_mm_gop_s"] = round(2 * signed.shape[0] * k * n / mm_s / 1e9, 1)
    return row


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def decode_step_seconds(seconds: float, rows: int = 1) -> float:
    """One decode step's int8 GEMMs at `rows` rows (sequences): every layer's own weights (the
    whole model, far beyond the caches), each streamed once, as a decode step reads them."""
    gemm = load_int8_gemm()
    assert gemm is not None, "the CPU kernels did not build"
    gen = torch.Generator().manual_seed(0)
    calls = []
    for _, k, n, count in SHAPES:
        qx = torch.randint(0, 100, (rows, k), dtype=gemm.input_dtype, generator=gen)
        ones_m, ones_n = torch.ones(rows), torch.ones(n)
        for _ in range(count):
            weight = PackedInt8Weight(torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen))
            calls.append((qx, ones_m, weight, ones_n))

    def step() -> None:
        for qx, row_scale, weight, col_scale in calls:
            gemm(qx, row_scale, weight, col_scale, None)

    return best_seconds(step, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64, 512])
    parser.add_argument("--int-mm", action="store_true", help="also time torch._int_mm")
    parser.add_argument(
        "--cold", action="store_true", help="int8 weights read from memory on every call"
    )
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    parser.add_argument("--step-rows", type=int, nargs="+", default=[],
                        help="also time a whole decode step's int8 GEMMs at these row counts")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    bandwidth = memory_bandwidth(args.seconds)
    step_s = decode_step_seconds(max(args.seconds, 1.0))
    weight_bytes = sum(k * n * count for _, k, n, count in SHAPES)
    shapes = [
        {
            "name": name,
            "k": k,
            "n": n,
            "rows": [
                measure_shape(k, n, m, args.seconds, args.int_mm, args.cold) for m in args.rows
            ],
        }
        for name, k, n, _ in SHAPES
    ]
    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "isa": cpu_isa(),
                "threads": torch.get_num_threads(),
                "int8_weights_cold": args.cold,
                "memory_bandwidth_gb_s": round(bandwidth / 1e9, 2),
                "int8_weight_bytes": weight_bytes,
                "int8_weights_read_once_ms": round(weight_bytes / bandwidth * 1e3, 2),
                "decode_step_int8_gemms_ms": round(step_s * 1e3, 2),
                "decode_step_int8_gemms_ms_by_rows": {
                    rows: round(decode_step_seconds(max(args.seconds, 1.0), rows) * 1e3, 2)
                    for rows in args.step_rows
                },
                "shapes": shapes,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
