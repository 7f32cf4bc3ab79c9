"""Hugging Face model folders: config.json plus one or several *.safetensors files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import safetensors
import torch
from safetensors import safe_open

from .checkpoint import Checkpoint
from .errors import CheckpointError
from .hf_config import model_config_from_hf, read_json

_INDEX_FILE = "model.safetensors.index.json"
_SINGLE_FILE = "model.safetensors"


class SafetensorsCheckpoint(Checkpoint):
    format = "safetensors"

    def __init__(self, folder: Path, dtype: torch.dtype = torch.float32) -> None:
        config = model_config_from_hf(folder)
        self._files = weight_files(folder)
        for file in self._files:
            _check_header(file)  # fail now on a corrupt file, not halfway through loading
        super().__init__(folder, config, dtype)

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        for file in self._files:
            try:
                with safe_open(file, framework="pt") as handle:
                    for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                        yield name, handle.get_tensor(name).to(self.dtype)
            except (safetensors.SafetensorError, OSError) as exc:
                raise CheckpointError(f"{file}: cannot read tensors: {exc}") from exc


def weight_files(folder: Path) -> list[Path]:
    """The shards named by the index, the single model.safetensors, or every *.safetensors."""
    index_path = folder / _INDEX_FILE
    if index_path.is_file():
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: no weight_map")
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [str(f.name) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index_path}: shard files are missing: {', '.join(missing)}")
        return files
    if (folder / _SINGLE_FILE).is_file():
        return [folder / _SINGLE_FILE]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors weights in the folder")
    return files


def _check_header(file: Path) -> None:
    try:
        with safe_open(file, framework="pt") as handle:
            handle.keys()
    except (safetensors.SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file (truncated or corrupt): {exc}") from exc
