"""Turns a step's last-position logits into the next token of each sequence.

Per row, in this order: repetition / frequency / presence penalties, logit bias and the
min_tokens EOS mask change the logits; greedy rows (temperature 0 or top_k 1) take the argmax;
other rows divide by the temperature, apply min_p, then top-k, then top-p (each on the
distribution left by the previous filter) and draw by inverse CDF with one uniform number.

On the CPU, where the kernels are available and the logits are float32, greedy rows take their
argmax and the other rows are drawn through C kernels (`cpu_kernels/sampling.py`: softmax,
min_p, top-k / top-p and the inverse CDF in one call, the same tokens at every vector width);
elsewhere torch ops do it.

Off the CPU the sampler never reads the device until its results are ready: each row's
candidate width is known on the host from its settings, and the results of the step (tokens,
logprobs) come back in one copy (`host_read.py`).

Reproducibility: a seeded sequence draws its uniform from its own generator (kept in
`seq.sampler_state`, seeded from (seed, sample index)), and what it draws depends only on its own
row, so sample k of a request comes out the same whatever else is in the batch and whatever n is.
"""

from __future__ import annotations

import hashlib

import torch

from . import torch_sampling
from .cpu_kernels.sampling import SamplingKernel, fits, load_sampling_kernel
from .device import host_to_device
from .host_read import read_to_host
from .sample_result import SampleResult
from .sampling_metadata import (
    PenaltyInputs,
    RandomRows,
    SamplingMetadata,
    TokenEdits,
    build_sampling_metadata,
)
from .sequence import SequenceState


def derive_seed(seed: int, index: int) -> int:
    """Generator seed of sample `index` of a request seeded with `seed` (stable across runs)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class Sampler:
    def __init__(
        self,
        vocab_size: int,
        device: torch.device,
        seed: int | None = None,
        sync_free: bool | None = None,
    ) -> None:
        """`seed` seeds the generator shared by unseeded sequences (None: nondeterministic).
        `sync_free`: choose tokens without reading the device before the results, and read
        those in one packed copy (None: off the CPU, where every read is a wait for the
        device; on CPU the loop that stops at the first sufficient width is cheaper). Both
        ways choose the same tokens; the CPU tests set it to run the device path."""
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.sync_free = self.device.type != "cpu" if sync_free is None else sync_free
        self._kernel = load_sampling_kernel() if self.device.type == "cpu" else None
        self._generator = torch.Generator(device=self.device)
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)

    def __call__(
        self, logits: torch.Tensor, seqs: list[SequenceState], eos_token_ids: list[int]
    ) -> list[SampleResult]:
        """Sample one token per row; row i of `logits` ([B, vocab_size]) belongs to seqs[i]."""
        if logits.dim() != 2 or logits.shape[0] != len(seqs) or logits.shape[1] != self.vocab_size:
            raise ValueError(
                f"logits must have shape [{len(seqs)}, {self.vocab_size}] (one row per sequence), "
                f"got {list(logits.shape)}"
            )
        if not seqs:
            return []
        logits = logits.float()
        meta = build_sampling_metadata(
            seqs, eos_token_ids, self.vocab_size, logits.device, self._generator_for
        )
        processed = apply_logit_processors(logits, meta)
        token_ids = self._choose_tokens(processed, meta)
        logprobs = _logprob_tensors(logits, token_ids, meta)
        # One read of the step's results (one copy on the device path).
        host = read_to_host([token_ids, *logprobs], packed=self.sync_free)
        token_list: list[int] = host[0].tolist()
        top_logprobs = _logprob_results(meta, *host) if logprobs else {}
        return [
            SampleResult(
                token_id=token,
                logprob=top_logprobs[row][0] if row in top_logprobs else None,
                top_logprobs=top_logprobs[row][1] if row in top_logprobs else None,
            )
            for row, token in enumerate(token_list)
        ]

    def _generator_for(self, seq: SequenceState) -> torch.Generator | None:
        seed = seq.sampling_params.seed
        if seed is None:
            return None
        if not isinstance(seq.sampler_state, torch.Generator):
            generator = torch.Generator(device=self.device)
            generator.manual_seed(derive_seed(seed, seq.index))
            seq.sampler_state = generator
        return seq.sampler_state

    def _choose_tokens(self, logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        if meta.random is None:
            return self._argmax(logits)
        if not meta.greedy_rows:
            return self._sample_random(logits, meta.random)
        token_ids = torch.empty(meta.num_rows, dtype=torch.int64, device=logits.device)
        greedy = _row_index(meta.greedy_rows, meta.num_rows, logits.device)
        token_ids[greedy] = self._argmax(logits[greedy])
        random = _row_index(meta.random.rows, meta.num_rows, logits.device)
        token_ids[random] = self._sample_random(logits[random], meta.random)
        return token_ids

    def _argmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's greedy token (the first of equal maxima, as torch.argmax)."""
        if self._kernel is not None and fits(logits):
            return self._kernel.argmax(logits.contiguous())
        return logits.argmax(dim=-1)

    def _sample_random(self, logits: torch.Tensor, rows: RandomRows) -> torch.Tensor:
        """Token ids for the rows of `rows` (`logits` holds exactly those rows, in order)."""
        kernel = self._kernel if fits(logits) else None
        if kernel is not None:
            return self._sample_random_with_kernel(kernel, logits.contiguous(), rows)
        weights = torch_sampling.weights(logits, rows.temperature, rows.min_p)
        uniforms = self._uniforms(rows.generators, weights.device)

        num_rows = len(rows.rows)
        token_ids = torch.empty(num_rows, dtype=torch.int64, device=weights.device)
        if rows.truncated:
            truncated = _row_index(rows.truncated, num_rows, weights.device)
            token_ids[truncated] = self._sample_truncated(
                weights[truncated], rows, truncated, uniforms[truncated]
            )
        if rows.untruncated:
            untruncated = _row_index(rows.untruncated, num_rows, weights.device)
            # In place: the weights of these rows are not needed afterwards. float32 is enough:
            # cumsum accumulates in a wider type, so each prefix is rounded once (error ~6e-8).
            cdf = weights[untruncated].cumsum_(dim=-1)
            token_ids[untruncated] = torch_sampling.inverse_cdf(cdf, uniforms[untruncated], None)
        return token_ids

    def _sample_random_with_kernel(
        self, kernel: SamplingKernel, logits: torch.Tensor, rows: RandomRows
    ) -> torch.Tensor:
        """`_sample_random` on CPU float32 logits through the C kernels: the untruncated rows
        through `sample`, the top-k / top-p rows through `sample_truncated` (whether or not
        `sync_free`: both choose the torch paths' tokens). The same uniforms as the torch path
        (drawn in the same order), so a seeded request draws the same numbers either way."""
        uniforms = self._uniforms(rows.generators, logits.device)
        if not rows.truncated:
            return kernel.sample(logits, rows.temperature, rows.min_p, uniforms)
        if not rows.untruncated:
            return kernel.sample_truncated(
                logits, rows.temperature, rows.min_p, rows.top_k, rows.top_p, uniforms
            )
        num_rows = len(rows.rows)
        token_ids = torch.empty(num_rows, dtype=torch.int64)
        untruncated = _row_index(rows.untruncated, num_rows, logits.device)
        token_ids[untruncated] = kernel.sample(
            logits[untruncated],
            rows.temperature[untruncated],
            None if rows.min_p is None else rows.min_p[untruncated],
            uniforms[untruncated],
        )
        truncated = _row_index(rows.truncated, num_rows, logits.device)
        token_ids[truncated] = kernel.sample_truncated(
            logits[truncated],
            rows.temperature[truncated],
            None if rows.min_p is None else rows.min_p[truncated],
            rows.top_k[truncated],
            rows.top_p[truncated],
            uniforms[truncated],
        )
        return token_ids

    def _sample_truncated(
        self,
        weights: torch.Tensor,
        rows: RandomRows,
        truncated: torch.Tensor | slice,
        uniforms: torch.Tensor,
    ) -> torch.Tensor:
        """Tokens of the top-k / top-p rows (`truncated` selects them in `rows`; `weights`
        and `uniforms` hold only them)."""
        args = (weights, rows.top_k[truncated], rows.top_p[truncated], uniforms)
        if self.sync_free:
            widths = [torch_sampling.candidate_width(rows.top_k_values[i], self.vocab_size) for i in rows.truncated]
            return torch_sampling.sample_at_widths(*args, widths)
        return torch_sampling.sample_top_k_top_p(*args)

    def _uniforms(
        self, generators: list[torch.Generator | None], device: torch.device
    ) -> torch.Tensor:
        """One U[0, 1) float64 per row: from the row's own generator, or the shared one."""
        uniforms = torch.empty(len(generators), dtype=torch.float64, device=device)
        shared_rows = [i for i, g in enumerate(generators) if g is None]
        if shared_rows:
            uniforms[_row_index(shared_rows, len(generators), device)] = torch.rand(
                len(shared_rows), dtype=torch.float64, device=device, generator=self._generator
            )
        for i, generator in enumerate(generators):
            if generator is not None:
                uniforms[i] = torch.rand(1, dtype=torch.float64, device=device, generator=generator)[0]
        return uniforms


def _row_index(positions: list[int], num_rows: int, device: torch.device) -> torch.Tensor | slice:
    """Index selecting `positions`; a plain slice when that is every row, to avoid a copy."""
    if len(positions) == num_rows:
        return slice(None)
    return host_to_device(positions, torch.int64, device)


def apply_logit_processors(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Penalties, logit bias and the min_tokens mask; returns a new tensor if anything changes."""
    if not meta.modifies_logits:
        return logits
    logits = logits.clone()
    if meta.penalties is not None:
        _apply_penalties(logits, meta.penalties)
    if meta.logit_bias is not None:
        bias = meta.logit_bias
        assert bias.values is not None
        logits.index_put_((bias.rows, bias.token_ids), bias.values, accumulate=True)
    if meta.banned_tokens is not None:
        _mask_tokens(logits, meta.banned_tokens)
    return logits


def _apply_penalties(logits: torch.Tensor, penalties: PenaltyInputs) -> None:
    """In place. Repetition (HF): seen positive logits / r, negative * r, over prompt + output.
    Frequency / presence (OpenAI): logit -= f * count + p * (count > 0), over output tokens.

    Works on the [R, L] gathered logits of the seen ids rather than on [R, V] masks; pad ids
    (= vocab_size) read and write a spare last column. Repeated ids scatter equal values."""
    vocab_size = logits.shape[1]
    num_rows = penalties.rows.shape[0]
    work = torch.zeros(num_rows, vocab_size + 1, dtype=logits.dtype, device=logits.device)
    work[:, :vocab_size] = logits[penalties.rows]
    if penalties.context_ids is not None:
        seen = work.gather(1, penalties.context_ids)
        penalized = torch.where(seen > 0, seen / penalties.repetition, seen * penalties.repetition)
        work.scatter_(1, penalties.context_ids, penalized)
    if penalties.output_ids is not None:
        output_ids = penalties.output_ids
        counts = torch.zeros_like(work)
        counts.scatter_add_(1, output_ids, torch.ones_like(output_ids, dtype=work.dtype))
        # Every non-pad id here occurred at least once, so the presence penalty applies to all.
        penalty = penalties.frequency * counts.gather(1, output_ids) + penalties.presence
        work.scatter_(1, output_ids, work.gather(1, output_ids) - penalty)
    logits[penalties.rows] = work[:, :vocab_size]


def _mask_tokens(logits: torch.Tensor, edits: TokenEdits) -> None:
    minus_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    logits.index_put_((edits.rows, edits.token_ids), minus_inf)


def _logprob_tensors(
    logits: torch.Tensor, token_ids: torch.Tensor, meta: SamplingMetadata
) -> list[torch.Tensor]:
    """For the rows that asked for logprobs (none: an empty list): the chosen token's raw
    logprob [L], and the top logprobs' values and ids [L, max k] (width 0 where every row asks
    for the chosen token only), still on the device."""
    if not meta.logprob_rows:
        return []
    rows = _row_index(meta.logprob_rows, meta.num_rows, logits.device)
    logprobs = torch.log_softmax(logits[rows], dim=-1)
    chosen = logprobs.gather(1, token_ids[rows].unsqueeze(1)).squeeze(1)
    max_k = min(max(meta.logprob_counts), logits.shape[1])
    values, ids = torch.topk(logprobs, max_k, dim=-1)
    return [chosen, values, ids]


def _logprob_results(
    meta: SamplingMetadata,
    token_ids: torch.Tensor,
    chosen: torch.Tensor,
    top_values: torch.Tensor,
    top_ids: torch.Tensor,
) -> dict[int, tuple[float, dict[int, float]]]:
    """Row -> (chosen token's raw logprob, top logprobs), from `_logprob_tensors`' results and
    the step's tokens, all read back to the host."""
    chosen_list: list[float] = chosen.tolist()
    token_list: list[int] = token_ids.tolist()
    value_lists: list[list[float]] = top_values.tolist()
    id_lists: list[list[int]] = top_ids.tolist()
    result: dict[int, tuple[float, dict[int, float]]] = {}
    for i, (row, k) in enumerate(zip(meta.logprob_rows, meta.logprob_counts, strict=True)):
        if k == 0:
            top = {token_list[row]: chosen_list[i]}
        else:
            top = dict(zip(id_lists[i][:k], value_lists[i][:k], strict=True))
        result[row] = (chosen_list[i], top)
    return result
