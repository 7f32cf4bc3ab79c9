"""Model implementations."""

from .llama import LlamaForCausalLM, build_model

__all__ = ["LlamaForCausalLM", "build_model"]
