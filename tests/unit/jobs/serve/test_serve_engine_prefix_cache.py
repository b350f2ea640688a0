"""Prefix caching in the engine: a prompt that starts like a recent one prefills only the rest, and
greedy answers are those of an engine without the cache (float32, a tiny random Llama).

Tokens are compared exactly. Log-probabilities are compared with a tolerance: a reused key was
computed in a forward pass of another shape, whose float32 sums may round differently (one ulp
of the ~10-magnitude log-probabilities of a 49k-token vocabulary is ~1e-6).
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alpaca_jobs.serve.engine import Engine, RequestHandle
from alpaca_jobs.serve.prefix_cache import MIN_TOKENS
from alpaca_jobs.serve.sampling import Sampled, SamplingParams

LOGPROB_TOLERANCE = 1e-4

# Disjoint token ranges: prompts share exactly what a test means them to share.
SHARED = list(range(1000, 1100))


def tokens(start: int, count: int) -> list[int]:
    return list(range(start, start + count))


@pytest.fixture(scope="module")
def tokenizer():
    from alpaca_jobs.models import builtin_files, load_tokenizer

    return load_tokenizer(builtin_files("smollm2-135m-instruct"))


def tiny_llama(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model(tokenizer) -> LlamaForCausalLM:
    return tiny_llama(tokenizer)


class Driver:
    """An engine whose steps the test takes; greedy requests that report every token's log-probability."""

    def __init__(self, model, tokenizer, **options) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = Engine(model, tokenizer, **options)

    def submit(self, prompt: list[int], max_tokens: int = 12, adapter: str | None = None) -> RequestHandle:
        params = SamplingParams(max_tokens=max_tokens, temperature=0, logprobs=0)
        return self.engine.submit([prompt], params, 1, self.loop, adapter=adapter)

    def run_to_end(self) -> None:
        while self.engine.running or self.engine.waiting:
            self.engine.step()

    def answer(self, handle: RequestHandle) -> list[Sampled]:
        self.loop.run_until_complete(asyncio.sleep(0))  # deliver what the engine pushed
        sampled: list[Sampled] = []
        while not handle.events.empty():
            sampled.extend(handle.events.get_nowait().logprobs)
        return sampled

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def drivers(model, tokenizer):
    """The same model served with the prefix cache (the default) and without it."""
    made = Driver(model, tokenizer), Driver(model, tokenizer, prefix_cache_tokens=0)
    yield made
    for driver in made:
        driver.close()


def assert_same_answers(cached: list[Sampled], plain: list[Sampled]) -> None:
    assert [s.token for s in cached] == [s.token for s in plain]
    assert len(plain) > 1
    for a, b in zip(cached, plain, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=LOGPROB_TOLERANCE)


def test_a_prompt_sharing_a_long_prefix_prefills_only_the_rest_and_answers_the_same(drivers) -> None:
    first, second = [*SHARED, *tokens(2000, 20)], [*SHARED, *tokens(3000, 30)]
    answers = []
    for driver in drivers:
        handles = []
        for prompt in (first, second):  # one after the other: the second finds the first stored
            handles.append(driver.submit(prompt))
            driver.run_to_end()
        answers.append([driver.answer(h) for h in handles])
        if driver.engine.prefix_store is not None:
            assert [h.cached_tokens for h in handles] == [0, len(SHARED)]
    cached, plain = (d.engine for d in drivers)
    assert_same_answers(answers[0][0], answers[1][0])
    assert_same_answers(answers[0][1], answers[1][1])
    assert cached.prefix_hit_tokens == len(SHARED)
    assert cached.prefilled_tokens == len(first) + len(second) - len(SHARED)
    assert (plain.prefix_hit_tokens, plain.prefilled_tokens) == (0, len(first) + len(second))


def test_a_batch_mixing_a_reused_prefix_and_a_fresh_prompt_joins_running_rows_and_answers_the_same(drivers) -> None:
    running = [*SHARED, *tokens(2000, 10)]
    reusing = [*SHARED, *tokens(3000, 40)]  # its rest is longer than the fresh prompt's whole
    fresh = tokens(4000, 35)
    answers = []
    for driver in drivers:
        long = driver.submit(running, max_tokens=30)
        driver.engine.step()  # prefilled (and stored), then one decode step
        joining = [driver.submit(reusing), driver.submit(fresh)]
        driver.engine.step()  # both prefilled in one pass, merged into the running batch
        assert driver.engine.running == 3
        driver.run_to_end()
        answers.append([driver.answer(h) for h in (long, *joining)])
    for cached, plain in zip(*answers, strict=True):
        assert_same_answers(cached, plain)
    engine = drivers[0].engine
    assert engine.prefix_hit_tokens == len(SHARED)
    assert engine.prefilled_tokens == len(running) + len(reusing) - len(SHARED) + len(fresh)


def test_short_overlaps_are_prefilled_and_a_disabled_cache_reuses_nothing(model, tokenizer) -> None:
    short_shared = SHARED[: MIN_TOKENS - 1]
    small = Driver(model, tokenizer, prefix_cache_tokens=150)
    off = Driver(model, tokenizer, prefix_cache_tokens=0)
    try:
        for driver in (small, off):
            for start in (2000, 3000, 4000):
                handle = driver.submit([*short_shared, *tokens(start, 60)], max_tokens=2)
                driver.run_to_end()
                assert handle.cached_tokens == 0
            # The same prompt twice: all but its last token could come from the store.
            again = [*SHARED, *tokens(5000, 5)]
            for _ in range(2):
                handle = driver.submit(again, max_tokens=2)
                driver.run_to_end()
        assert off.engine.prefix_store is None and off.engine.prefix_hit_tokens == 0
        assert handle.cached_tokens == 0
        assert small.engine.prefix_hit_tokens == len(again) - 1
        store = small.engine.prefix_store
        assert store is not None and store.tokens <= 150  # at this bound it holds one prompt, the latest
        assert store.lookup(None, again) is not None
    finally:
        small.close()
        off.close()


def test_prefixes_are_reused_only_through_the_same_adapter(tokenizer) -> None:
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(tokenizer)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    torch.manual_seed(1)
    peft_model = get_peft_model(base, config, adapter_name="french")
    torch.manual_seed(2)
    peft_model.add_adapter("german", config)
    peft_model.eval()
    drivers = Driver(peft_model, tokenizer), Driver(peft_model, tokenizer, prefix_cache_tokens=0)
    requests = [(None, 2000), ("french", 3000), ("german", 4000), ("french", 5000), (None, 6000)]
    answers = []
    try:
        for driver in drivers:
            handles = []
            for adapter, start in requests:
                handles.append(driver.submit([*SHARED, *tokens(start, 20)], adapter=adapter))
                driver.run_to_end()
            answers.append([driver.answer(h) for h in handles])
            if driver.engine.prefix_store is not None:
                # Each adapter's first prompt finds only other adapters' prefixes; its second, its own.
                assert [h.cached_tokens for h in handles] == [0, 0, 0, len(SHARED), len(SHARED)]
        for cached, plain in zip(*answers, strict=True):
            assert_same_answers(cached, plain)
        engine = drivers[0].engine
        engine.remove_adapter("german", lambda model: model.delete_adapter("german"))
        engine.step()  # runs the removal between steps
        assert engine.prefix_store is not None and engine.prefix_store.lookup("german", [*SHARED, 1]) is None
        assert engine.prefix_store.lookup("french", [*SHARED, 1]) is not None
    finally:
        for driver in drivers:
            driver.close()
