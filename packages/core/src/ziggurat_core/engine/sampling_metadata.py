"""Per-step batch view of the sampling settings of the sequences being sampled.

`build_sampling_metadata` turns the per-sequence `SamplingParams` of one step into a few small
tensors and index lists, grouped by what the sampler has to do with them, so the sampler can skip
every stage that no row asked for.
"""

from __future__ import annotations

import array
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .device import host_to_device, move_to_device
from .sequence import SequenceState


@dataclass
class PenaltyInputs:
    """Penalty settings and seen-token ids of the rows that use any penalty."""

    rows: torch.Tensor  # [R] batch rows
    repetition: torch.Tensor  # [R, 1]; 1.0 where unused
    frequency: torch.Tensor  # [R, 1]; 0.0 where unused
    presence: torch.Tensor  # [R, 1]; 0.0 where unused
    # Prompt + output ids of rows with a repetition penalty, padded with vocab_size; None when
    # no row has one.
    context_ids: torch.Tensor | None  # [R, L]
    # Output ids of rows with a frequency or presence penalty, padded with vocab_size; None when
    # no row has one.
    output_ids: torch.Tensor | None  # [R, L]


@dataclass
class TokenEdits:
    """Logit changes at (row, token) positions, one entry per position."""

    rows: torch.Tensor  # [N]
    token_ids: torch.Tensor  # [N]
    values: torch.Tensor | None  # [N] additive values; None for "mask to -inf"


@dataclass
class RandomRows:
    """Settings of the rows that are sampled at random, in the order of `rows`."""

    rows: list[int]  # batch rows
    temperature: torch.Tensor  # [R, 1]
    min_p: torch.Tensor | None  # [R, 1]; None when no row uses min_p
    top_k: torch.Tensor  # [R] int64; vocab_size where top-k is disabled
    # The same on the host: off the CPU the sampler picks each row's candidate width from it
    # without reading the device.
    top_k_values: list[int]
    top_p: torch.Tensor  # [R] float64; 1.0 where top-p is disabled
    truncated: list[int]  # positions (into `rows`) of rows that use top-k or top-p
    untruncated: list[int]  # positions of the other rows
    generators: list[torch.Generator | None]  # a row's own generator; None: the shared one


@dataclass
class SamplingMetadata:
    num_rows: int
    greedy_rows: list[int]
    random: RandomRows | None  # None when every row is greedy
    penalties: PenaltyInputs | None
    logit_bias: TokenEdits | None
    banned_tokens: TokenEdits | None  # EOS / stop tokens masked until min_tokens is reached
    logprob_rows: list[int]  # rows whose sequence asked for logprobs
    logprob_counts: list[int]  # the `logprobs` setting of each of those rows

    @property
    def modifies_logits(self) -> bool:
        """Whether any row needs its logits changed before choosing a token."""
        return (
            self.penalties is not None
            or self.logit_bias is not None
            or self.banned_tokens is not None
        )


def padded_token_ids(rows: list[list[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """[len(rows), max_len] int64 tensor of the rows, right-padded with `pad_id` (width >= 1)."""
    width = max(1, max((len(ids) for ids in rows), default=0))
    flat: list[int] = []
    for ids in rows:
        flat += ids
        flat += [pad_id] * (width - len(ids))
    if not flat:
        return torch.empty(0, width, dtype=torch.int64, device=device)
    # array -> frombuffer is several times faster than torch.tensor on a long Python list
    # (the tensor keeps the array alive).
    ids_tensor = torch.frombuffer(array.array("q", flat), dtype=torch.int64)
    return move_to_device(ids_tensor.view(len(rows), width), device)


def build_sampling_metadata(
    seqs: list[SequenceState],
    eos_token_ids: list[int],
    vocab_size: int,
    device: torch.device,
    generator_for: Callable[[SequenceState], torch.Generator | None],
) -> SamplingMetadata:
    """Group the sampling settings of `seqs` (row i = seqs[i]) by the work they need.

    `generator_for(seq)` gives the sequence's own generator (or None for the shared one); it is
    only called for rows sampled at random.
    """
    greedy_rows: list[int] = []
    random_rows: list[int] = []
    penalty_rows: list[int] = []
    bias_rows: list[int] = []
    bias_ids: list[int] = []
    bias_values: list[float] = []
    banned_rows: list[int] = []
    banned_ids: list[int] = []
    logprob_rows: list[int] = []
    logprob_counts: list[int] = []

    for row, seq in enumerate(seqs):
        params = seq.sampling_params
        (greedy_rows if params.greedy else random_rows).append(row)
        if (
            params.repetition_penalty != 1.0
            or params.frequency_penalty != 0.0
            or params.presence_penalty != 0.0
        ):
            penalty_rows.append(row)
        if params.logit_bias:
            for token_id, bias in params.logit_bias.items():
                # The engine rejects out-of-range ids; skip any that slip through.
                if 0 <= token_id < vocab_size:
                    bias_rows.append(row)
                    bias_ids.append(token_id)
                    bias_values.append(float(bias))
        # A constrained row's grammar bitmask keeps EOS out instead (structured_output), unless
        # EOS is all the grammar allows: masking it here too could leave no token at all.
        if seq.num_output_tokens < params.min_tokens and params.structured_outputs is None:
            # With ignore_eos, EOS never ends the sequence, so there is no need to mask it.
            stoppers = set(params.stop_token_ids)
            if not params.ignore_eos:
                stoppers.update(eos_token_ids)
            for token_id in sorted(stoppers):
                if 0 <= token_id < vocab_size:
                    banned_rows.append(row)
                    banned_ids.append(token_id)
        if params.logprobs is not None:
            logprob_rows.append(row)
            logprob_counts.append(params.logprobs)

    def long_tensor(values: list[int]) -> torch.Tensor:
        return host_to_device(values, torch.int64, device)

    logit_bias = None
    if bias_rows:
        logit_bias = TokenEdits(
            long_tensor(bias_rows),
            long_tensor(bias_ids),
            host_to_device(bias_values, torch.float32, device),
        )
    banned_tokens = None
    if banned_rows:
        banned_tokens = TokenEdits(long_tensor(banned_rows), long_tensor(banned_ids), None)

    return SamplingMetadata(
        num_rows=len(seqs),
        greedy_rows=greedy_rows,
        random=_random_rows(seqs, random_rows, vocab_size, device, generator_for),
        penalties=_penalty_inputs(seqs, penalty_rows, vocab_size, device),
        logit_bias=logit_bias,
        banned_tokens=banned_tokens,
        logprob_rows=logprob_rows,
        logprob_counts=logprob_counts,
    )


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return host_to_device(values, torch.float32, device).unsqueeze(1)


def _random_rows(
    seqs: list[SequenceState],
    rows: list[int],
    vocab_size: int,
    device: torch.device,
    generator_for: Callable[[SequenceState], torch.Generator | None],
) -> RandomRows | None:
    if not rows:
        return None
    params = [seqs[row].sampling_params for row in rows]
    top_k = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]
    truncated: list[int] = []
    untruncated: list[int] = []
    for i, (k, p) in enumerate(zip(top_k, params, strict=True)):
        (truncated if k < vocab_size or p.top_p < 1.0 else untruncated).append(i)
    uses_min_p = any(p.min_p > 0.0 for p in params)
    return RandomRows(
        rows=rows,
        temperature=_column([p.temperature for p in params], device),
        min_p=_column([p.min_p for p in params], device) if uses_min_p else None,
        top_k=host_to_device(top_k, torch.int64, device),
        top_k_values=top_k,
        top_p=host_to_device([p.top_p for p in params], torch.float64, device),
        truncated=truncated,
        untruncated=untruncated,
        generators=[generator_for(seqs[row]) for row in rows],
    )


def _penalty_inputs(
    seqs: list[SequenceState], rows: list[int], vocab_size: int, device: torch.device
) -> PenaltyInputs | None:
    if not rows:
        return None
    params = [seqs[row].sampling_params for row in rows]
    uses_repetition = [p.repetition_penalty != 1.0 for p in params]
    uses_counts = [p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in params]
    context_ids = None
    if any(uses_repetition):
        context_ids = padded_token_ids(
            [seqs[row].token_ids if used else [] for row, used in zip(rows, uses_repetition, strict=True)],
            vocab_size,
            device,
        )
    output_ids = None
    if any(uses_counts):
        output_ids = padded_token_ids(
            [seqs[row].output_token_ids if used else [] for row, used in zip(rows, uses_counts, strict=True)],
            vocab_size,
            device,
        )
    return PenaltyInputs(
        rows=host_to_device(rows, torch.int64, device),
        repetition=_column([p.repetition_penalty for p in params], device),
        frequency=_column([p.frequency_penalty for p in params], device),
        presence=_column([p.presence_penalty for p in params], device),
        context_ids=context_ids,
        output_ids=output_ids,
    )
