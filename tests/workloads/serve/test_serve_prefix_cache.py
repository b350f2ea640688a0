"""Prefix caching through the real server: two of the quickstart's generation prompts (the built-in
guidelines, then different seed tasks) one after the other. The second prefills only what follows
the shared tokens, the metrics count both parts, and usage still bills the whole prompt."""

from __future__ import annotations

import openai

from alpaca_jobs.generate.prompt import build_prompt
from alpaca_jobs.generate.seeds import load_seed_tasks
from alpaca_jobs.serve.prefix_cache import common_prefix
from alpaca_jobs.serve.prompts import encode

from conftest import MODEL_NAME


def quickstart_prompts() -> list[str]:
    seeds = [seed.as_task() for seed in load_seed_tasks()]
    return [build_prompt(seeds[0:3], 6), build_prompt(seeds[3:6], 6)]


def test_a_second_quickstart_prompt_reuses_the_guidelines_and_is_billed_in_full(serve_factory, tiny_loaded) -> None:
    prompts = quickstart_prompts()
    ids = [encode(p, tiny_loaded.tokenizer, chat=False) for p in prompts]  # as /v1/completions encodes them
    shared = common_prefix(*ids)
    assert shared > 250  # the guidelines
    answers, figures = {}, {}
    for cache_tokens in (4096, 0):
        with serve_factory(max_new_tokens=16, prefix_cache_tokens=cache_tokens) as server:
            client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)
            completions = [client.completions.create(model=MODEL_NAME, prompt=p, max_tokens=12, temperature=0)
                           for p in prompts]
            answers[cache_tokens] = [c.choices[0].text for c in completions]
            assert [c.usage.prompt_tokens for c in completions] == [len(i) for i in ids]
            registry = server.app.state.server.metrics.registry
            figures[cache_tokens] = (registry.get_sample_value("alpaca_serve_prefix_cache_hit_tokens_total"),
                                     registry.get_sample_value("alpaca_serve_prefill_tokens_total"))
    assert answers[4096] == answers[0]
    assert figures[4096] == (shared, len(ids[0]) + len(ids[1]) - shared)
    assert figures[0] == (0, len(ids[0]) + len(ids[1]))
