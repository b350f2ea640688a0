"""The validation loss: the mean over the held-out response tokens, and its place on the loss curve."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from alpaca_jobs.train import distributed, reporting
from alpaca_jobs.train.data import IGNORE_INDEX, Example
from alpaca_jobs.train.validation import Batching, validation_loss


def tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).train()


def examples() -> list[Example]:
    out = []
    for i in range(11):
        prompt = [3 + (i + k) % 40 for k in range(4 + i % 3)]
        answer = [5 + (2 * i + k) % 40 for k in range(2 + i % 4)]
        out.append(Example(tuple(prompt + answer), tuple([IGNORE_INDEX] * len(prompt) + answer), i + 1))
    return out


def reference_loss(model: torch.nn.Module, rows: list[Example]) -> float:
    """Token-weighted mean cross-entropy, one example at a time, no batching at all."""
    total, count = 0.0, 0
    with torch.no_grad():
        for example in rows:
            ids = torch.tensor([example.input_ids])
            logits = model(input_ids=ids).logits[0, :-1]
            labels = torch.tensor(example.labels[1:])
            total += float(torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((labels != IGNORE_INDEX).sum())
    return total / count


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_validation_loss_is_the_token_weighted_mean_whatever_the_batching(packing: bool) -> None:
    model, rows = tiny_llama(), examples()
    batching = Batching(packing=packing, micro_batch_size=3, max_seq_length=16, pad_token_id=0)
    measured = validation_loss(model, rows, distributed.Topology(), batching, torch.device("cpu"), nullcontext())
    model.eval()
    assert measured == pytest.approx(reference_loss(model, rows), rel=1e-5)


def test_measuring_leaves_the_model_training_and_its_weights_alone() -> None:
    model, rows = tiny_llama(), examples()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    validation_loss(model, rows, distributed.Topology(), Batching(True, 2, 16, 0), torch.device("cpu"), nullcontext())
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_the_loss_curve_draws_both_series() -> None:
    records = [{"step": s, "loss": 3.0 - 0.1 * s} | ({"validation_loss": 3.1 - 0.1 * s} if s % 4 == 0 else {}) for s in range(1, 9)]
    assert reporting.validation_points(records) == [(4, pytest.approx(2.7)), (8, pytest.approx(2.3))]
    figure = reporting.loss_figure(records, "run")
    lines = {line.get_label(): list(line.get_xdata()) for line in figure.axes[0].get_lines()}
    assert lines == {"training": list(range(1, 9)), "validation (held-out rows)": [4, 8]}
    only_training = reporting.loss_figure([{"step": 1, "loss": 2.0}], "run")
    assert [line.get_label() for line in only_training.axes[0].get_lines()] == ["training"]
