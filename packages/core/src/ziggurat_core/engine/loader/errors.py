"""The one error type the loader raises."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded: missing or corrupt file, unsupported architecture, or
    tensors that do not match the model. The message names the file and what is wrong."""
