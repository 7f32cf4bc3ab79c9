"""The oneDNN weight prepack used on CPU gives the same results as the plain matmul."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from ziggurat_core.engine.layers import Linear, prepack_cpu_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("rows", [1, 7, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_prepacked_linear_matches_plain(rows: int, bias: bool) -> None:
    torch.manual_seed(0)
    layer = Linear(96, 4096, bias=bias)
    nn.init.normal_(layer.weight)
    if layer.bias is not None:
        nn.init.normal_(layer.bias)
    x = torch.randn(rows, 96)
    expected = F.linear(x, layer.weight, layer.bias)
    layer.prepack_mkldnn()
    got = layer(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)


def test_only_float32_layers_at_least_as_wide_as_asked_are_packed() -> None:
    model = nn.Sequential(Linear(8, 4096), Linear(4096, 16), Linear(8, 2048))
    for layer in model:
        nn.init.normal_(layer.weight)
    assert prepack_cpu_linears(model, min_out_features=2048) == 2
    assert model[0]._mkldnn_weight is not None and model[1]._mkldnn_weight is None
    assert prepack_cpu_linears(model) == 3  # by default every float32 CPU Linear
    half = nn.Sequential(Linear(8, 4096)).to(torch.bfloat16)
    assert prepack_cpu_linears(half) == 0
