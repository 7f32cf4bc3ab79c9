"""Tensor parallelism on torch.distributed: the model split across ranks in local processes.

Imported only when `EngineConfig.tensor_parallel_size > 1`; with 1 nothing here runs and
torch.distributed is never initialised.
"""

from .group import COLLECTIVE_TIMEOUT_S, TensorParallelError
from .messages import RankState
from .runner import TensorParallelRankError, TensorParallelRunner
from .sharding import TensorParallelConfigError, check_tensor_parallel

__all__ = [
    "COLLECTIVE_TIMEOUT_S",
    "RankState",
    "TensorParallelConfigError",
    "TensorParallelError",
    "TensorParallelRankError",
    "TensorParallelRunner",
    "check_tensor_parallel",
]
