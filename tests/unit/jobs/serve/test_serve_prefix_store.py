"""The prefix store alone: what a lookup reuses, what it never reuses, and its token bound."""

from __future__ import annotations

import torch

from alpaca_jobs.serve.prefix_cache import Layers, PrefixStore, common_prefix

LAYERS = 2


def kv(prompt: list[int]) -> Layers:
    """Keys and values that name their layer and token, so a test can tell which positions came back."""
    tokens = torch.tensor(prompt, dtype=torch.float32)
    return tuple((tokens.view(1, -1, 1).expand(2, -1, 3) + layer, -tokens.view(1, -1, 1).expand(2, -1, 3) - layer)
                 for layer in range(LAYERS))


def test_common_prefix_counts_shared_leading_tokens() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_lookup_returns_the_longest_shared_prefix_and_its_positions() -> None:
    store = PrefixStore(1000, min_tokens=4)
    shared = list(range(100, 140))
    store.add(None, [*shared, 1, 2, 3], kv([*shared, 1, 2, 3]))
    store.add(None, [*shared[:10], 9, 9], kv([*shared[:10], 9, 9]))
    prefix = store.lookup(None, [*shared, 7, 8])
    assert prefix is not None and prefix.length == len(shared)
    for layer, (keys, values) in enumerate(prefix.layers):
        assert keys.shape == (2, len(shared), 3)
        assert keys[0, :, 0].tolist() == [t + layer for t in shared]
        assert values[1, :, 2].tolist() == [-t - layer for t in shared]


def test_one_prompt_token_is_always_left_to_prefill() -> None:
    store = PrefixStore(1000, min_tokens=4)
    prompt = list(range(50))
    store.add(None, prompt, kv(prompt))
    prefix = store.lookup(None, prompt)  # the same prompt again
    assert prefix is not None and prefix.length == len(prompt) - 1
    shorter = store.lookup(None, prompt[:20])
    assert shorter is not None and shorter.length == 19


def test_short_overlaps_and_other_adapters_reuse_nothing() -> None:
    store = PrefixStore(1000, min_tokens=32)
    prompt = list(range(64))
    store.add(None, prompt, kv(prompt))
    assert store.lookup(None, [*prompt[:31], 999, 1000]) is None  # 31 shared tokens, under the minimum
    assert store.lookup(None, [*prompt[:32], 999]) is not None
    assert store.lookup("french", prompt) is None  # an adapter's keys and values differ from the base's
    store.add("french", prompt, kv(prompt))
    assert store.lookup("french", prompt) is not None
    store.drop_adapter("french")
    assert store.lookup("french", prompt) is None and store.lookup(None, prompt) is not None


def test_the_store_never_holds_more_tokens_than_its_bound_and_evicts_the_least_recently_used() -> None:
    store = PrefixStore(100, min_tokens=4)
    prompts = [[n] * 40 for n in range(1, 4)]  # 40 tokens each, nothing shared
    store.add(None, prompts[0], kv(prompts[0]))
    store.add(None, prompts[1], kv(prompts[1]))
    assert store.lookup(None, prompts[0]) is not None  # prompt 0 is now the most recently used
    store.add(None, prompts[2], kv(prompts[2]))
    assert store.tokens == 80 <= store.max_tokens and len(store) == 2
    assert store.lookup(None, prompts[1]) is None  # the least recently used went
    assert store.lookup(None, prompts[0]) is not None and store.lookup(None, prompts[2]) is not None
    store.add(None, [7] * 101, kv([7] * 101))  # larger than the whole store: not kept
    assert store.tokens == 80 and store.lookup(None, [7] * 101) is None


def test_a_prompt_and_its_extension_are_kept_once() -> None:
    store = PrefixStore(1000, min_tokens=4)
    short, long = list(range(40)), list(range(60))
    store.add(None, short, kv(short))
    store.add(None, long, kv(long))  # covers the shorter one, which goes
    assert (len(store), store.tokens) == (1, 60)
    store.add(None, short, kv(short))  # already covered: nothing added
    store.add(None, long, kv(long))
    assert (len(store), store.tokens) == (1, 60)
    prefix = store.lookup(None, [*short, 1000])
    assert prefix is not None and prefix.length == 40


def test_stored_tensors_are_copies_of_the_callers() -> None:
    store = PrefixStore(1000, min_tokens=4)
    prompt = list(range(40))
    layers = tuple((k.clone(), v.clone()) for k, v in kv(prompt))
    store.add(None, prompt, layers)
    layers[0][0].fill_(float("nan"))  # the engine's batch buffers are written after the store copied them
    prefix = store.lookup(None, [*prompt, 1])
    assert prefix is not None and not bool(prefix.layers[0][0].isnan().any())
