"""The sampler's draws in torch ops: the path on CUDA and wherever the CPU kernels are not in use
(`sampler.py` chooses). Unnormalised probabilities at a temperature with min_p, the inverse CDF
with one uniform per row, and top-k / top-p over the most likely candidates: a partial top-k at
growing widths on the CPU, one width per row from its settings alone off it (no device reads).
"""

from __future__ import annotations

import torch

from .device import host_to_device

# Top-k / top-p first look at the 256 most likely tokens, then the 4096 most likely, and sort the
# whole vocabulary only for rows whose nucleus is larger still: a partial top-k costs a fraction
# of a full sort of the vocabulary (measurements in docs/benchmarks.md).
CANDIDATE_WIDTHS = (256, 4096)


def weights(
    logits: torch.Tensor, temperature: torch.Tensor, min_p: torch.Tensor | None
) -> torch.Tensor:
    """Unnormalised probabilities of the rows of `logits` at their temperature ([R, 1]), min_p
    applied (the row maximum becomes exactly 1), computed in one buffer: every later step only
    needs ratios, and fewer [R, V] temporaries is measurably faster."""
    weights = logits / temperature
    weights -= weights.amax(dim=-1, keepdim=True)
    weights.exp_()
    if min_p is not None:
        # The threshold is min_p * (max probability) = min_p here; min_p = 0 removes nothing.
        weights.masked_fill_(weights < min_p, 0.0)
    return weights


def inverse_cdf(
    cdf: torch.Tensor, uniforms: torch.Tensor, num_kept: torch.Tensor | None
) -> torch.Tensor:
    """Column of each row where `cdf` first exceeds uniform * (mass of the kept prefix).
    `num_kept` [R] limits each row to its first columns (None: all of them)."""
    if num_kept is None:
        mass = cdf[:, -1]
        last = torch.full_like(uniforms, cdf.shape[1] - 1, dtype=torch.int64)
    else:
        last = num_kept - 1
        mass = cdf.gather(1, last.unsqueeze(1)).squeeze(1)
    # Stay strictly below the mass, so the chosen column always has a non-zero probability.
    scaled = (uniforms * mass).to(cdf.dtype)
    target = torch.minimum(scaled, torch.nextafter(mass, torch.zeros_like(mass)))
    column = torch.searchsorted(cdf, target.unsqueeze(1), right=True).squeeze(1)
    return torch.minimum(column, last)


def sample_top_k_top_p(
    probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, uniforms: torch.Tensor
) -> torch.Tensor:
    """Sample each row from its top-k tokens, then from the smallest prefix of those whose
    (renormalised) mass reaches top_p. `probs` may be unnormalised; `top_k` is vocab_size where
    disabled.

    Rows first try the narrowest candidate width that can hold their top-k and move to the next
    width while their nucleus does not fit. Which widths a row goes through depends only on that
    row, so its token does not depend on the rest of the batch, even where probabilities tie.

    This loop reads on the host which rows are done after each width: the CPU path. Off the
    CPU, `sample_at_widths` chooses the same tokens without those reads."""
    vocab_size = probs.shape[1]
    token_ids = torch.empty(probs.shape[0], dtype=torch.int64, device=probs.device)
    pending = torch.ones(probs.shape[0], dtype=torch.bool, device=probs.device)
    widths = [w for w in CANDIDATE_WIDTHS if w < vocab_size] + [vocab_size]
    for width in widths:
        tier = pending if width == vocab_size else pending & ((top_k <= width) | (top_k >= vocab_size))
        if bool(tier.all()):
            token_ids, complete = _sample_sorted_prefix(probs, top_k, top_p, uniforms, width)
            pending = ~complete
        elif bool(tier.any()):
            rows = tier.nonzero().squeeze(1)
            token_ids[rows], complete = _sample_sorted_prefix(
                probs[rows], top_k[rows], top_p[rows], uniforms[rows], width
            )
            pending[rows] = ~complete
        if not bool(pending.any()):
            break
    return token_ids


def candidate_width(top_k: int, vocab_size: int) -> int:
    """The candidates a row is sampled from off the CPU, from its settings alone: a row with
    top-k the narrowest candidate width that holds its k (a partial top-k, never a sort of the
    vocabulary), a row with top-p only the whole vocabulary, sorted (its nucleus is unknown
    until the probabilities are read). `top_k` is vocab_size where disabled."""
    if top_k < vocab_size:
        for width in CANDIDATE_WIDTHS:
            if top_k <= width < vocab_size:
                return width
    return vocab_size


def sample_at_widths(
    probs: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    uniforms: torch.Tensor,
    widths: list[int],
) -> torch.Tensor:
    """`sample_top_k_top_p` without reading the device: row i is sampled once among its
    `widths[i]` most likely tokens (`candidate_width`), rows of one width together. The
    tokens are the loop's: a top-k row ends the loop at the same width, and a top-p row's
    nucleus is the same prefix of the sorted vocabulary as of the first candidates that hold
    it. Tied probabilities: the full sort is stable (the lower token id first), so a top-p-only
    row's choice among ties is defined here, where the loop's partial top-k leaves it to torch."""
    num_rows = probs.shape[0]
    groups: dict[int, list[int]] = {}
    for row, width in enumerate(widths):
        groups.setdefault(width, []).append(row)
    if len(groups) == 1:
        return _sample_sorted_prefix(probs, top_k, top_p, uniforms, widths[0])[0]
    token_ids = torch.empty(num_rows, dtype=torch.int64, device=probs.device)
    for width, rows in groups.items():
        index = host_to_device(rows, torch.int64, probs.device)
        token_ids[index] = _sample_sorted_prefix(
            probs[index], top_k[index], top_p[index], uniforms[index], width
        )[0]
    return token_ids


def _sample_sorted_prefix(
    probs: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    uniforms: torch.Tensor,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample among each row's `width` most likely tokens. Also returns, per row, whether those
    candidates held everything top-k/top-p keeps (if not, that row's token is meaningless)."""
    if width == probs.shape[1]:
        candidate_probs, candidate_ids = torch.sort(probs, dim=-1, descending=True, stable=True)
    else:
        candidate_probs, candidate_ids = torch.topk(probs, width, dim=-1, sorted=True)
    cdf = torch.cumsum(candidate_probs, dim=-1, dtype=torch.float64)
    k_in_candidates = top_k <= width
    k_kept = top_k.clamp(max=width)
    # Mass that top_p is a fraction of: what top-k kept, or the whole row without top-k (the
    # same sum at every width, so a top-p row keeps the same nucleus whichever width holds it).
    k_mass = cdf.gather(1, (k_kept - 1).unsqueeze(1)).squeeze(1)
    row_mass = probs.sum(dim=-1).to(torch.float64)  # float32 sum avoids a float64 copy of probs
    p_mass = top_p * torch.where(k_in_candidates & (top_k < probs.shape[1]), k_mass, row_mass)
    # Keep a token while the mass of the more likely tokens is still below top_p (always >= 1).
    mass_before = cdf - candidate_probs.to(torch.float64)
    p_kept = (mass_before < p_mass.unsqueeze(1)).sum(dim=-1).clamp(min=1)
    num_kept = torch.minimum(k_kept, p_kept)
    complete = k_in_candidates | (cdf[:, -1] >= p_mass)
    columns = inverse_cdf(cdf, uniforms, num_kept)
    return candidate_ids.gather(1, columns.unsqueeze(1)).squeeze(1), complete
