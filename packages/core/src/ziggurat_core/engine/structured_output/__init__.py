"""Constrained decoding (structured output) with llguidance.

- `grammar.py`: a `StructuredOutputsParams` as llguidance grammar text;
- `ll_tokenizer.py`: llguidance's tokenizer, from our tokenizer.json text;
- `compiler.py`: grammar -> compiled matcher, cached by a hash of the grammar;
- `manager.py`: the matcher of each constrained sequence, the step's bitmask, forced tokens;
- `bitmask.py`: the bitmask applied to the logits (the only module here that needs torch).
"""
