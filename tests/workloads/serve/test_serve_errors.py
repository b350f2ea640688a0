"""Auth, error shapes, overload: what a client sees when something is wrong."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

API_KEY = "test-key-not-secret"  # as in conftest.py
MODEL_NAME = "tiny-llama"


def post(server, body: dict, key: str | None = API_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.v1 + "/chat/completions", json=body, headers=headers, timeout=30)


def body(**overrides) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **overrides}


def assert_error_shape(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
        assert param.split("[")[0].split(".")[0] in error["message"]
    return error


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_v1_needs_the_bearer_key(server, key: str | None) -> None:
    error = assert_error_shape(post(server, body(), key=key), 401)
    assert error["code"] == "invalid_api_key"
    assert API_KEY not in error["message"]
    bad = openai.OpenAI(base_url=server.v1, api_key=key or "not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "system", "content": "only a system message"}]}, "messages"),
        ({"logit_bias": {"999999999": 5}}, "logit_bias"),
        ({"messages": [{"role": "user", "content": "word " * 5000}]}, "messages"),
    ],
)
def test_bad_requests_are_400_naming_the_field(server, overrides: dict, param: str) -> None:
    error = assert_error_shape(post(server, body(**overrides)), 400, param)
    assert error["type"] == "invalid_request_error"


def test_missing_field_and_broken_json_are_400(server) -> None:
    assert_error_shape(post(server, {"model": MODEL_NAME}), 400, "messages")
    broken = httpx.post(
        server.v1 + "/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    )
    assert_error_shape(broken, 400)


def test_unknown_model_is_404(server, client: openai.OpenAI) -> None:
    error = assert_error_shape(post(server, body(model="gpt-17")), 404, "model")
    assert error["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-17", prompt="x", max_tokens=1)


def test_unknown_route_is_404_in_openai_shape(server) -> None:
    assert_error_shape(httpx.get(server.v1 + "/nothing-here", headers={"Authorization": f"Bearer {API_KEY}"}), 404)


def _queue_depth(base_url: str) -> float:
    for line in httpx.get(base_url + "/metrics").text.splitlines():
        if line.startswith("alpaca_serve_queue_depth "):
            return float(line.split()[1])
    raise AssertionError("no queue depth gauge")


def test_full_queue_answers_429_and_the_queued_request_still_completes(serve_factory) -> None:
    with serve_factory(max_batch_size=1, max_queue=1, max_new_tokens=4000) as running:
        client = openai.OpenAI(base_url=running.v1, api_key="unused", max_retries=0, timeout=60)
        # A long streamed answer holds the only batch slot until we close it.
        hog = client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "go"}], max_tokens=4000, stream=True
        )
        next(iter(hog))
        queued: dict = {}
        waiter = threading.Thread(
            target=lambda: queued.update(
                r=client.chat.completions.create(
                    model=MODEL_NAME, messages=[{"role": "user", "content": "wait"}], max_tokens=3, temperature=0
                )
            )
        )
        waiter.start()
        deadline = time.monotonic() + 20
        while _queue_depth(running.base_url) < 1:
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.02)
        raw = httpx.post(running.v1 + "/chat/completions", json=body(), timeout=30)
        error = assert_error_shape(raw, 429)
        assert error["type"] == "rate_limit_error"
        assert raw.headers["retry-after"] == "1"
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}], max_tokens=1)
        hog.close()  # the client goes away: its sequence must leave the batch
        waiter.join(30)
        assert queued["r"].usage.completion_tokens == 3
        assert _queue_depth(running.base_url) == 0
