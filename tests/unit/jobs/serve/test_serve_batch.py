"""Rows of different lengths sharing one left-padded cache decode as they would alone."""

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from alpaca_jobs.serve import batch


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


CACHES = {"dynamic": DynamicCache, "growing": batch.new_cache}
make_cache = batch.new_cache


@pytest.fixture(params=sorted(CACHES), autouse=True)
def cache_kind(request):
    """Every test runs on transformers' DynamicCache and on the engine's GrowingCache."""
    global make_cache
    make_cache = CACHES[request.param]
    yield request.param
    make_cache = batch.new_cache


def prefill(model, rows: list[list[int]]) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    cache = make_cache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=batch.positions(mask, width),
                **{batch.cache_keyword(model): cache})
    return cache, mask, out.logits[:, -1]


def decode(model, cache, mask, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    out = model(input_ids=torch.tensor(tokens).unsqueeze(1), attention_mask=mask,
                position_ids=batch.positions(mask, 1), **{batch.cache_keyword(model): cache})
    return mask, out.logits[:, -1]


@torch.no_grad()
def test_merged_rows_decode_like_separate_rows_and_leave_cleanly() -> None:
    model = tiny_model()
    a, b, c = [5, 6, 7, 8, 9, 10, 11], [12, 13], [20, 21, 22, 23]
    alone = {}
    for name, row in {"a": a, "b": b, "c": c}.items():
        cache, mask, _ = prefill(model, [row])
        alone[name] = decode(model, cache, mask, [3])[1][0]

    cache, mask, _ = prefill(model, [a])
    # One decode step for `a` alone, so the running row is longer than its prompt when others join.
    mask, _ = decode(model, cache, mask, [3])
    alone_a2 = None
    cache_a, mask_a, _ = prefill(model, [a])
    mask_a, _ = decode(model, cache_a, mask_a, [3])
    mask_a, alone_a2 = decode(model, cache_a, mask_a, [4])

    other, other_mask, _ = prefill(model, [b, c])
    cache, mask = batch.merge(cache, mask, other, other_mask)
    assert mask.shape == (3, len(a) + 1)
    mask, logits = decode(model, cache, mask, [4, 3, 3])
    torch.testing.assert_close(logits[0], alone_a2[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], alone["b"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[2], alone["c"], atol=1e-4, rtol=1e-4)

    # `a` leaves: columns only it used go, and the others keep their exact cache.
    mask = batch.select_rows(cache, mask, [1, 2])
    assert mask.shape[1] == len(c) + 1  # its prompt and the one token decoded since the merge
    assert cache.layers[0].keys.shape[2] == mask.shape[1]
    mask, logits = decode(model, cache, mask, [7, 7])
    cache_b, mask_b, _ = prefill(model, [b])
    mask_b, _ = decode(model, cache_b, mask_b, [3])
    _, expected_b = decode(model, cache_b, mask_b, [7])
    torch.testing.assert_close(logits[0], expected_b[0], atol=1e-4, rtol=1e-4)


def test_positions_count_only_valid_tokens() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1]])
    assert batch.positions(mask, 2).tolist() == [[1, 2], [4, 5]]


@torch.no_grad()
def test_cached_forward_uses_the_installed_transformers_api_without_warnings() -> None:
    import warnings

    model = tiny_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated keyword would raise here
        cache, mask, _ = prefill(model, [[5, 6, 7]])
        decode(model, cache, mask, [3])
    assert cache.get_seq_length() == 4


@torch.no_grad()
def test_growing_cache_decodes_long_answers_exactly_like_dynamic_cache() -> None:
    model = tiny_model()
    logits = {}
    for kind, factory in CACHES.items():
        global make_cache
        make_cache = factory
        cache, mask, _ = prefill(model, [[5, 6, 7], [9, 10, 11, 12, 13]])
        steps = []
        for step in range(100):  # past several regrowths of the buffers
            mask, out = decode(model, cache, mask, [step % 90, (step * 7) % 90])
            steps.append(out)
            if step == 40:  # rows leave and come back mid-answer, as in the engine
                mask = batch.select_rows(cache, mask, [1])
                other, other_mask, _ = prefill(model, [[20, 21]])
                cache, mask = batch.merge(cache, mask, other, other_mask)
        logits[kind] = torch.stack(steps)
        assert cache.get_seq_length() == mask.shape[1]
    torch.testing.assert_close(logits["growing"], logits["dynamic"], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_prefill_from_reused_prefixes_then_packed_decodes_like_full_prefills() -> None:
    model = tiny_model()
    shared = [5, 6, 7, 8, 9, 10, 11, 12]
    a, b = [*shared, 30, 31, 32], [40, 41, 42, 43, 44]  # a reuses `shared`; b reuses nothing
    stored, _, _ = prefill(model, [[*shared, 60]])  # some earlier prompt that started with `shared`
    prefix = tuple((k[:, :len(shared)], v[:, :len(shared)]) for k, v in batch.row_tail(stored, 0, len(shared) + 1))

    cache, prefix_mask = batch.from_prefixes([prefix, None])
    assert prefix_mask.tolist() == [[1] * len(shared), [0] * len(shared)]
    rests = [a[len(shared):], b]
    width = max(len(r) for r in rests)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rests])
    mask = torch.cat([prefix_mask, torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rests])], dim=1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=batch.positions(mask, width),
                **{batch.cache_keyword(model): cache})
    mask = batch.pack_right(cache, mask)
    assert mask.tolist() == [[1] * len(a), [0] * (len(a) - len(b)) + [1] * len(b)]
    assert cache.layers[0].keys.shape[2] == len(a)
    mask, logits = decode(model, cache, mask, [3, 4])

    for row, (prompt, token) in enumerate([(a, 3), (b, 4)]):
        alone_cache, alone_mask, alone_last = prefill(model, [prompt])
        torch.testing.assert_close(out.logits[row, -1], alone_last[0], atol=1e-5, rtol=1e-5)
        _, alone_next = decode(model, alone_cache, alone_mask, [token])
        torch.testing.assert_close(logits[row], alone_next[0], atol=1e-5, rtol=1e-5)
        # The packed row holds the prompt's keys in its last columns, as a prefill of it alone would.
        torch.testing.assert_close(batch.row_tail(cache, row, len(prompt) + 1)[1][0],
                                   alone_cache.layers[1].keys[0], atol=1e-5, rtol=1e-5)
