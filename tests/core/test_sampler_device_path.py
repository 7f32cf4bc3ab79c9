"""The sampler's device path (`sync_free`, the default off the CPU) reads nothing back to the
host before its results, and samples each top-k row from a partial top-k only. It must choose
exactly the tokens, and return exactly the logprobs, of the CPU path. Both run here on CPU
tensors."""

from __future__ import annotations

import pytest
import torch
from ziggurat_core.engine import sampler as sampler_module
from ziggurat_core.engine import torch_sampling
from ziggurat_core.engine.host_read import read_to_host
from ziggurat_core.engine.sampler import Sampler
from ziggurat_core.engine.sampling_metadata import build_sampling_metadata
from ziggurat_core.engine.sampling_params import SamplingParams
from ziggurat_core.engine.sequence import SequenceState
from ziggurat_core.engine.torch_sampling import candidate_width

CPU = torch.device("cpu")
EOS = 1


@pytest.fixture(autouse=True)
def torch_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths through torch ops: on CPU float32 logits the C sampling kernels would take
    every row whatever `sync_free` says (test_sampling_kernel.py compares them with these)."""
    monkeypatch.setenv("ZIGGURAT_CPU_KERNELS", "0")


def test_a_row_candidate_width_follows_from_its_settings_alone() -> None:
    vocab = 50000
    assert candidate_width(1, vocab) == 256
    assert candidate_width(256, vocab) == 256
    assert candidate_width(257, vocab) == 4096
    assert candidate_width(4096, vocab) == 4096
    assert candidate_width(4097, vocab) == vocab  # beyond the widest candidates: the sort
    assert candidate_width(vocab, vocab) == vocab  # no top-k (top-p only): the sort
    # A width is only a partial top-k where it is narrower than the vocabulary.
    assert candidate_width(200, 256) == 256
    assert candidate_width(255, 256) == 256
    assert candidate_width(300, 300) == 300
    assert candidate_width(270, 300) == 300


def _mixed_rows(vocab_size: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    rows = 24
    # Sharp and flat rows, so nuclei fall inside and outside each candidate width.
    sharpness = torch.tensor([0.5, 2.0, 8.0])[torch.arange(rows) % 3].unsqueeze(1)
    probs = torch.softmax(torch.randn(rows, vocab_size, generator=gen) * sharpness, dim=-1)
    top_k = torch.tensor([vocab_size, 1, 20, 256, 300, 4096, 5000, vocab_size] * 3)
    top_k = top_k.clamp(max=vocab_size)
    top_p = torch.tensor([0.9, 1.0, 0.5, 0.99, 0.3, 0.95, 0.999, 0.7] * 3, dtype=torch.float64)
    uniforms = torch.rand(rows, dtype=torch.float64, generator=gen)
    return probs, top_k, top_p, uniforms


@pytest.mark.parametrize("vocab_size", [300, 5000, 9000])
@pytest.mark.parametrize("seed", range(4))
def test_per_row_widths_pick_the_loops_tokens(vocab_size: int, seed: int) -> None:
    probs, top_k, top_p, uniforms = _mixed_rows(vocab_size, seed)
    widths = [candidate_width(int(k), vocab_size) for k in top_k]

    loop = torch_sampling.sample_top_k_top_p(probs, top_k, top_p, uniforms)
    at_widths = torch_sampling.sample_at_widths(probs, top_k, top_p, uniforms, widths)
    assert torch.equal(loop, at_widths)
    # Rows of one width alone take the same tokens as in the mixed batch.
    for width in set(widths):
        rows = torch.tensor([i for i, w in enumerate(widths) if w == width])
        alone = torch_sampling.sample_at_widths(
            probs[rows], top_k[rows], top_p[rows], uniforms[rows], [width] * len(rows)
        )
        assert torch.equal(alone, at_widths[rows])


def test_top_k_rows_with_tied_probabilities_take_the_loops_tokens() -> None:
    gen = torch.Generator().manual_seed(7)
    vocab_size = 5000
    # Integer logits: many exact ties, also at the top-k boundary.
    logits = torch.randint(0, 6, (16, vocab_size), generator=gen).float()
    probs = torch.softmax(logits, dim=-1)
    top_k = torch.tensor([1, 5, 40, 256, 257, 1000, 4096, 3] * 2)
    top_p = torch.tensor([1.0, 0.9, 0.5, 0.99, 1.0, 0.3, 0.8, 0.6] * 2, dtype=torch.float64)
    uniforms = torch.rand(16, dtype=torch.float64, generator=gen)
    widths = [candidate_width(int(k), vocab_size) for k in top_k]

    loop = torch_sampling.sample_top_k_top_p(probs, top_k, top_p, uniforms)
    assert torch.equal(torch_sampling.sample_at_widths(probs, top_k, top_p, uniforms, widths), loop)


def test_a_top_p_row_takes_the_lower_token_id_among_ties() -> None:
    vocab_size = 600
    probs = torch.zeros(1, vocab_size)
    probs[0, 17] = probs[0, 431] = 0.5  # tied, all the mass between them
    # top_p 0.5 keeps only the first of the sorted pair, whatever the uniform.
    for uniform in (0.0, 0.3, 0.999):
        token = torch_sampling.sample_at_widths(
            probs, torch.tensor([vocab_size]), torch.tensor([0.5], dtype=torch.float64),
            torch.tensor([uniform], dtype=torch.float64), [vocab_size],
        )
        assert token.tolist() == [17]


def _seq(params: SamplingParams, index: int, output: list[int]) -> SequenceState:
    seq = SequenceState(f"req{index}", [2, 3, 5], params, index=index)
    for token in output:
        seq.append_token(token)
    return seq


def _mixed_params(vocab_size: int) -> list[SamplingParams]:
    return [
        SamplingParams(temperature=0.0, logprobs=3),
        SamplingParams(temperature=0.8, top_k=20, seed=11, logprobs=0),
        SamplingParams(temperature=1.0, top_p=0.9),
        SamplingParams(temperature=1.2, top_k=300, top_p=0.8, seed=12, logprobs=5),
        SamplingParams(temperature=0.7, top_k=5000),
        SamplingParams(temperature=1.0, min_p=0.05, top_p=0.95, repetition_penalty=1.3),
        SamplingParams(temperature=1.0, seed=13, logprobs=2, presence_penalty=0.5),
        SamplingParams(temperature=0.9, top_k=1, logprobs=1),
        SamplingParams(temperature=1.1, top_k=vocab_size // 2, top_p=0.5, seed=14),
        SamplingParams(temperature=1.0, top_p=0.3, seed=15, logit_bias={4: 3.0}, logprobs=4),
    ]


@pytest.mark.parametrize("seed", range(3))
def test_the_sync_free_sampler_returns_the_cpu_paths_tokens_and_logprobs(seed: int) -> None:
    vocab_size = 6000
    params = _mixed_params(vocab_size)
    gen = torch.Generator().manual_seed(seed)
    results = {}
    for sync_free in (False, True):
        sampler = Sampler(vocab_size, CPU, seed=100 + seed, sync_free=sync_free)
        seqs = [_seq(p, i, [7, 9]) for i, p in enumerate(params)]
        gen.manual_seed(seed)
        steps = []
        for _ in range(4):
            logits = torch.randn(len(seqs), vocab_size, generator=gen) * 3
            steps.append(sampler(logits, seqs, [EOS]))
            for seq, result in zip(seqs, steps[-1], strict=True):
                seq.append_token(result.token_id)
        results[sync_free] = steps
    assert results[True] == results[False]
    # The logprob rows did report logprobs, so the comparison covers them.
    assert results[True][0][3].top_logprobs is not None
    assert len(results[True][0][3].top_logprobs) == 5


def test_the_sync_free_token_choice_reads_nothing_back(monkeypatch: pytest.MonkeyPatch) -> None:
    vocab_size = 6000
    params = _mixed_params(vocab_size)
    seqs = [_seq(p, i, [7]) for i, p in enumerate(params)]
    logits = torch.randn(len(seqs), vocab_size, generator=torch.Generator().manual_seed(3))

    def refuse(*_: object) -> None:
        raise AssertionError("a device value was read on the host")

    for sync_free, reads in ((True, False), (False, True)):
        sampler = Sampler(vocab_size, CPU, seed=1, sync_free=sync_free)
        meta = build_sampling_metadata(seqs, [EOS], vocab_size, CPU, sampler._generator_for)
        processed = sampler_module.apply_logit_processors(logits, meta)
        with monkeypatch.context() as patch:
            for name in ("__bool__", "item", "tolist"):
                patch.setattr(torch.Tensor, name, refuse)
            if reads:  # the CPU loop does read (the check itself can fail)
                with pytest.raises(AssertionError, match="read on the host"):
                    sampler._choose_tokens(processed, meta)
            else:
                sampler._choose_tokens(processed, meta)


def test_one_packed_read_returns_every_value_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.tensor([0, 151935, 5, 2**40], dtype=torch.int64)
    chosen = torch.log_softmax(torch.randn(3, 50, generator=gen), dim=-1)[:, 0]
    values, ids = torch.topk(torch.log_softmax(torch.randn(3, 50, generator=gen), dim=-1), 4)
    empty = torch.empty(3, 0)
    tensors = [tokens, chosen, values, ids, empty, torch.tensor([1.5, -2.25], dtype=torch.float64)]

    packed = read_to_host(tensors, packed=True)
    for original, read in zip(tensors, packed, strict=True):
        assert read.dtype == original.dtype and read.shape == original.shape
        assert torch.equal(read, original)
        assert read.tolist() == original.tolist()
    assert read_to_host([]) == []


def test_a_packed_read_refuses_what_it_cannot_return_exactly() -> None:
    with pytest.raises(ValueError, match="2\\*\\*53"):
        read_to_host([torch.tensor([2**53 + 1])], packed=True)
    with pytest.raises(ValueError, match="float32/64"):
        read_to_host([torch.tensor([1.0], dtype=torch.bfloat16)], packed=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA sampler needs a CUDA GPU")
def test_on_gpu_the_device_path_picks_the_loops_tokens_and_reads_back_exactly() -> None:
    cuda = torch.device("cuda")
    for seed in range(3):
        probs, top_k, top_p, uniforms = (t.to(cuda) for t in _mixed_rows(9000, seed))
        widths = [candidate_width(int(k), 9000) for k in top_k.tolist()]
        loop = torch_sampling.sample_top_k_top_p(probs, top_k, top_p, uniforms)
        at_widths = torch_sampling.sample_at_widths(probs, top_k, top_p, uniforms, widths)
        assert torch.equal(loop, at_widths)
    tensors = [torch.arange(7, device=cuda), torch.randn(3, 5, device=cuda)]
    assert all(torch.equal(a.cpu(), b) for a, b in zip(tensors, read_to_host(tensors), strict=True))
    # Greedy rows with logprobs: the same results whichever way they are read back.
    params = [SamplingParams(temperature=0.0, logprobs=k) for k in (0, 1, 4, 20)]
    logits = torch.randn(len(params), 6000, device=cuda)
    results = [
        Sampler(6000, cuda, seed=0, sync_free=sync_free)(logits, [_seq(p, i, []) for i, p in enumerate(params)], [EOS])
        for sync_free in (False, True)
    ]
    assert results[0] == results[1]
