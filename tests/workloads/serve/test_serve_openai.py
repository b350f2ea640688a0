"""The server through the real openai client: answers, streaming, usage, sampling controls."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

API_KEY = "test-key-not-secret"  # as in conftest.py
MODEL_NAME = "tiny-llama"

PROMPTS = [
    "Give three tips for staying healthy.",
    "What is the capital of France?",
    "Write a haiku about rivers and stones in the early morning light.",
    "1 2 3 4",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
]


def reference_answer(loaded, content: str, max_new_tokens: int) -> tuple[str, int]:
    """What plain transformers `generate` answers greedily, and the prompt length."""
    tok = loaded.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = loaded.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True), ids.shape[1]


def chat(client: openai.OpenAI, content: str, **kwargs):
    return client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": content}], **kwargs)


def test_models_lists_the_served_name(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_greedy_chat_matches_plain_generate_with_exact_usage(client: openai.OpenAI, tiny_loaded) -> None:
    expected, prompt_tokens = reference_answer(tiny_loaded, PROMPTS[0], 12)
    response = chat(client, PROMPTS[0], max_tokens=12, temperature=0)
    assert response.choices[0].message.content == expected
    assert response.choices[0].finish_reason == "length"
    assert response.usage.prompt_tokens == prompt_tokens
    assert response.usage.completion_tokens == 12
    assert response.usage.total_tokens == prompt_tokens + 12


def test_stream_concatenates_to_the_same_answer_and_ends_with_usage(client: openai.OpenAI) -> None:
    whole = chat(client, PROMPTS[1], max_tokens=10, temperature=0)
    chunks = list(chat(client, PROMPTS[1], max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for p in pieces if p) > 1, "the answer should arrive in several chunks"
    assert "".join(pieces) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_stream_without_usage_option_sends_no_usage(client: openai.OpenAI) -> None:
    chunks = list(chat(client, PROMPTS[1], max_tokens=3, temperature=0, stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_concurrent_requests_get_the_answers_they_get_alone(client: openai.OpenAI) -> None:
    lengths = [5, 17, 9, 30, 3, 12]
    alone = [chat(client, p, max_tokens=n, temperature=0).choices[0].message.content for p, n in zip(PROMPTS, lengths)]
    assert len(set(alone)) == len(alone), "each prompt should get its own answer"
    with ThreadPoolExecutor(len(PROMPTS) * 2) as pool:
        together = list(
            pool.map(
                lambda pn: chat(client, pn[0], max_tokens=pn[1], temperature=0).choices[0].message.content,
                [*zip(PROMPTS, lengths), *zip(PROMPTS, lengths)],
            )
        )
    assert together == alone + alone


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(client: openai.OpenAI) -> None:
    alone = chat(client, PROMPTS[2], max_tokens=15, temperature=1.0, seed=1234).choices[0].message.content
    with ThreadPoolExecutor(4) as pool:
        noise = [pool.submit(chat, client, p, max_tokens=20, temperature=1.0) for p in PROMPTS[:3]]
        seeded = pool.submit(chat, client, PROMPTS[2], max_tokens=15, temperature=1.0, seed=1234)
        assert seeded.result().choices[0].message.content == alone
        [f.result() for f in noise]
    other_seed = chat(client, PROMPTS[2], max_tokens=15, temperature=1.0, seed=99).choices[0].message.content
    assert other_seed != alone


def test_n_choices_are_indexed_and_counted(client: openai.OpenAI) -> None:
    response = chat(client, PROMPTS[3], max_tokens=6, temperature=1.0, n=3, seed=5)
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert response.usage.completion_tokens == 18
    assert len({c.message.content for c in response.choices}) > 1, "different samples per choice"


def test_stop_string_cuts_the_answer_before_it(client: openai.OpenAI) -> None:
    full = chat(client, PROMPTS[0], max_tokens=30, temperature=0).choices[0].message.content
    # A 3-character piece from the middle of the answer, without spaces, seen there first.
    stop = next(
        full[i : i + 3]
        for i in range(len(full) // 3, len(full) - 3)
        if full[i : i + 3].isprintable() and not any(c.isspace() for c in full[i : i + 3]) and full.index(full[i : i + 3]) == i
    )
    expected = full[: full.index(stop)]
    response = chat(client, PROMPTS[0], max_tokens=30, temperature=0, stop=[stop])
    assert response.choices[0].message.content == expected
    assert response.choices[0].finish_reason == "stop"
    streamed = chat(client, PROMPTS[0], max_tokens=30, temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


def test_end_of_sequence_token_finishes_with_stop(client: openai.OpenAI, tiny_loaded) -> None:
    eos = tiny_loaded.tokenizer.eos_token_id
    response = chat(client, PROMPTS[0], max_tokens=20, temperature=0, logit_bias={str(eos): 100})
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].message.content == ""
    assert response.usage.completion_tokens == 0


def test_max_tokens_above_the_server_limit_is_served_up_to_the_limit(client: openai.OpenAI) -> None:
    response = chat(client, PROMPTS[3], max_tokens=100_000, temperature=0)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 256


def test_completions_with_prompt_list_echo_and_stream(client: openai.OpenAI, tiny_loaded) -> None:
    response = client.completions.create(model=MODEL_NAME, prompt=["Once upon", "The cat"], max_tokens=4, n=2, temperature=0)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert response.choices[0].text == response.choices[1].text  # greedy: the same text twice
    assert response.usage.completion_tokens == 16
    prompt_ids = [tiny_loaded.tokenizer(p)["input_ids"] for p in ["Once upon", "The cat"]]
    assert response.usage.prompt_tokens == 2 * sum(len(i) for i in prompt_ids)
    echoed = client.completions.create(model=MODEL_NAME, prompt="Once upon", max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == "Once upon" + response.choices[0].text
    stream = client.completions.create(
        model=MODEL_NAME, prompt="Once upon", max_tokens=4, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == response.choices[0].text
    assert chunks[-1].usage.completion_tokens == 4


def test_instruction_input_message_is_folded_into_the_chat_prompt(client: openai.OpenAI, tiny_loaded) -> None:
    with_input = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Summarize."}, {"role": "user", "name": "input", "content": "Cats sleep."}],
        max_tokens=5,
        temperature=0,
    )
    expected, prompt_tokens = reference_answer(tiny_loaded, "Summarize.\n\nCats sleep.", 5)
    assert with_input.choices[0].message.content == expected
    assert with_input.usage.prompt_tokens == prompt_tokens


def test_request_id_is_returned_and_names_the_completion(server) -> None:
    response = httpx.post(
        server.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}", "X-Request-Id": "trace-42"},
        json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42"
    assert response.json()["id"] == "chatcmpl-trace-42"
    assert httpx.get(server.base_url + "/healthz").headers["x-request-id"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/", "/info", "/static/app.js"])
def test_probes_metrics_and_page_need_no_key(server, path: str) -> None:
    assert httpx.get(server.base_url + path).status_code == 200


def test_metrics_count_requests_and_tokens_but_not_probes(server, client: openai.OpenAI) -> None:
    chat(client, PROMPTS[0], max_tokens=7, temperature=0)
    for _ in range(3):
        httpx.get(server.base_url + "/healthz")
    text = httpx.get(server.base_url + "/metrics").text
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert float(samples['alpaca_serve_requests_total{path="/v1/chat/completions",status="200"}']) >= 1
    assert float(samples["alpaca_serve_generation_tokens_total"]) >= 7
    assert float(samples["alpaca_serve_prompt_tokens_total"]) > 0
    assert float(samples['alpaca_serve_batch_size_count{phase="decode"}']) > 0
    assert "alpaca_serve_queue_depth" in samples and "alpaca_serve_time_to_first_token_seconds_count" in samples
    assert "healthz" not in text and "/metrics" not in text

