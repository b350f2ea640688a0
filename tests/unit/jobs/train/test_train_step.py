"""Packing must not change what the model learns: a packed row gives the loss and gradients of the
same examples run one by one (or padded), to float tolerance."""

from __future__ import annotations

import pytest
import torch

from alpaca_jobs.train import attention, collate
from alpaca_jobs.train.data import IGNORE_INDEX, Example
from alpaca_jobs.train.step import loss_sum


VOCAB, LAYERS = 101, 2


def rounding_tolerance(attn: str) -> float:
    """How far two runs that differ only in the order of floating-point sums may drift apart.

    A sum of K terms is exact to K unit roundoffs of its dtype (Higham's gamma_K). The longest sum
    here is over the vocabulary, and sums nest once per layer and once in the head, so packed and
    one-by-one runs agree to (LAYERS + 1) * VOCAB unit roundoffs of the least precise dtype in the
    computation: float64 throughout, except that eager attention (transformers') takes its
    softmax in float32 whatever the model's dtype.
    """
    dtype = torch.float32 if attn == "eager" else torch.float64
    return (LAYERS + 1) * VOCAB * torch.finfo(dtype).eps / 2


def tiny_llama(attn: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    attention.register()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    config._attn_implementation = attn
    return LlamaForCausalLM(config).double()


def examples() -> list[Example]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for prompt_len, response_len in [(5, 3), (2, 7), (9, 1), (4, 4)]:
        ids = torch.randint(3, 101, (prompt_len + response_len,), generator=gen).tolist()
        labels = [IGNORE_INDEX] * prompt_len + ids[prompt_len:]
        out.append(Example(tuple(ids), tuple(labels), line=1))
    return out


def grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def one_by_one(model: torch.nn.Module, items: list[Example]) -> tuple[float, int, list[torch.Tensor]]:
    model.zero_grad()
    total, count = 0.0, 0
    for example in items:
        loss, n = loss_sum(model, collate.padded([example], pad_token_id=0))
        loss.backward()
        total, count = total + float(loss.detach()), count + n
    return total, count, grads(model)


@pytest.mark.parametrize("attn", [attention.NAME, "sdpa", "eager"])
def test_packed_row_equals_examples_run_alone(attn: str) -> None:
    model = tiny_llama(attn)
    items = examples()
    alone, count, alone_grads = one_by_one(model, items)
    model.zero_grad()
    loss, n = loss_sum(model, collate.packed(items))
    loss.backward()
    assert n == count == sum(e.num_targets for e in items)
    tolerance = rounding_tolerance(attn)
    assert float(loss.detach()) == pytest.approx(alone, rel=tolerance)
    for packed_grad, single_grad in zip(grads(model), alone_grads, strict=True):
        # Entries near zero carry the rounding of the large ones they were summed from.
        scale = float(single_grad.abs().max())
        torch.testing.assert_close(packed_grad, single_grad, rtol=tolerance, atol=tolerance * scale)


def test_padded_batch_equals_examples_run_alone() -> None:
    model = tiny_llama("sdpa")
    items = examples()
    alone, count, _ = one_by_one(model, items)
    loss, n = loss_sum(model, collate.padded(items, pad_token_id=0))
    assert (n, float(loss.detach())) == (count, pytest.approx(alone, rel=rounding_tolerance("sdpa")))


def test_packing_without_position_reset_would_leak_across_examples() -> None:
    """The check above can fail: the same row with one running position sequence gives another loss."""
    model = tiny_llama("sdpa")
    batch = collate.packed(examples())
    leaky = collate.MicroBatch(batch.input_ids, batch.labels, torch.arange(batch.input_ids.shape[1])[None])
    alone, _, _ = one_by_one(model, examples())
    assert float(loss_sum(model, leaky)[0].detach()) != pytest.approx(alone, rel=1e-6)


def test_collate_layouts() -> None:
    a, b = examples()[:2]
    packed = collate.packed([a, b])
    assert packed.position_ids.tolist() == [list(range(len(a))) + list(range(len(b)))]
    assert packed.cu_seq_lens.tolist() == [0, len(a), len(a) + len(b)]
    assert packed.labels[0, len(a)] == IGNORE_INDEX, "no target across the example boundary"
    assert packed.real_tokens == packed.computed_tokens == len(a) + len(b)
    padded = collate.padded([a, b], pad_token_id=0)
    assert padded.input_ids.shape == (2, max(len(a), len(b)))
    assert padded.real_tokens == len(a) + len(b) < padded.computed_tokens
    assert (padded.labels[padded.attention_mask == 0] == IGNORE_INDEX).all()
    assert int(loss_sum(tiny_llama("sdpa"), collate.empty(0))[1]) == 0
