"""logprobs / top_logprobs through the openai client, in OpenAI's shapes, checked against the
model's own distribution computed here with a plain forward pass."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch

API_KEY = "test-key-not-secret"  # as in conftest.py
MODEL_NAME = "tiny-llama"
PROMPT = "Name three rivers in Europe."


def chat(client: openai.OpenAI, **kwargs):
    return client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": PROMPT}], temperature=0, **kwargs
    )


@torch.no_grad()
def reference_logprobs(loaded, prompt_ids: list[int], answer_ids: list[int]) -> torch.Tensor:
    """log p(answer token i | prompt, answer[:i]) from one forward pass over the whole text."""
    ids = torch.tensor([prompt_ids + answer_ids])
    logits = loaded.model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return torch.log_softmax(logits, dim=-1)


def chat_prompt_ids(loaded) -> list[int]:
    tok = loaded.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def test_chat_logprobs_are_the_models_and_spell_the_answer(client: openai.OpenAI, tiny_loaded) -> None:
    response = chat(client, max_tokens=10, logprobs=True, top_logprobs=3)
    choice = response.choices[0]
    content = choice.logprobs.content
    assert len(content) == response.usage.completion_tokens == 10
    assert b"".join(bytes(entry.bytes) for entry in content).decode() == choice.message.content
    answer_ids = tiny_loaded.tokenizer(choice.message.content, add_special_tokens=False)["input_ids"]
    expected = reference_logprobs(tiny_loaded, chat_prompt_ids(tiny_loaded), answer_ids)
    for i, entry in enumerate(content):
        assert len(entry.top_logprobs) == 3
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == entry.logprob
        assert entry.logprob == pytest.approx(float(expected[i, answer_ids[i]]), abs=1e-3)
        best = torch.topk(expected[i], 3)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(best.values.tolist(), abs=1e-3)


def test_chat_logprobs_without_top_and_absent_unless_asked(client: openai.OpenAI) -> None:
    plain = chat(client, max_tokens=4)
    assert plain.choices[0].logprobs is None
    only = chat(client, max_tokens=4, logprobs=True)
    assert len(only.choices[0].logprobs.content) == 4
    assert all(entry.top_logprobs == [] for entry in only.choices[0].logprobs.content)


def test_streamed_chat_logprobs_add_up_to_the_whole_answers(client: openai.OpenAI) -> None:
    whole = chat(client, max_tokens=12, logprobs=True, top_logprobs=2)
    chunks = list(chat(client, max_tokens=12, logprobs=True, top_logprobs=2, stream=True))
    streamed = [entry for c in chunks if c.choices and c.choices[0].logprobs for entry in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in whole.choices[0].logprobs.content]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert b"".join(bytes(e.bytes) for e in streamed).decode() == text == whole.choices[0].message.content


def test_completion_logprobs_in_the_legacy_shape(client: openai.OpenAI) -> None:
    response = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=8, temperature=0, logprobs=2)
    choice = response.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0 and 1 <= len(top) <= 2
        assert top[token] == pytest.approx(max(top.values()))  # greedy
    streamed = list(client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=8,
                                              temperature=0, logprobs=2, stream=True))
    pieces = [c.choices[0].logprobs for c in streamed if c.choices and c.choices[0].logprobs]
    assert [t for p in pieces for t in p.tokens] == lp.tokens
    assert [o for p in pieces for o in p.text_offset] == lp.text_offset
    assert [x for p in pieces for x in p.token_logprobs] == pytest.approx(lp.token_logprobs)


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/completions", {"logprobs": 6}, "logprobs"),
        ("/completions", {"logprobs": 1, "echo": True}, "logprobs"),
    ],
)
def test_logprob_options_out_of_range_are_400(server, path: str, extra: dict, param: str) -> None:
    body = {"model": MODEL_NAME, "max_tokens": 2, **extra}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if path.startswith("/chat") else {"prompt": "hi"})
    response = httpx.post(server.v1 + path, json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
