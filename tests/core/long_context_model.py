"""The tiny random model with a longer context window, for prompts that list tools.

The tiny tokenizer has ~300 tokens, so the Hermes tools section alone takes a few hundred; the
tiny model's 256-position window cannot hold it. Random weights work at any position, so a copy
of its Hugging Face folder with a larger `max_position_embeddings` serves these tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fixtures_models import TinyModel

LONG_CONTEXT = 2048


def long_context_copy(model: TinyModel, folder: Path) -> Path:
    """A copy of `model.hf_dir` under `folder` whose context window is LONG_CONTEXT tokens."""
    target = folder / "tiny-long-context"
    shutil.copytree(model.hf_dir, target)
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
    config["max_position_embeddings"] = LONG_CONTEXT
    config_path.write_text(json.dumps(config))
    return target
