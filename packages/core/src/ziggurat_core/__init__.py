"""Ziggurat core: protocol models (no torch) and the inference engine (torch)."""

__version__ = "0.1.0"
