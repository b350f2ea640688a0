"""What one client can do to the others: leave mid-answer, send values that break sampling, send
huge bodies, scan random URLs. None of it may cost the server work for nobody or fail other requests."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

API_KEY = "test-key-not-secret"  # as in conftest.py
MODEL_NAME = "tiny-llama"


def samples(base_url: str, headers: dict | None = None) -> dict[str, float]:
    text = httpx.get(base_url + "/metrics", headers=headers or {}).text
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))}


def wait_for(condition, what: str, timeout: float = 60) -> None:
    """A guard against hanging, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def raw_request(port: int, body: dict, path: str = "/v1/chat/completions") -> socket.socket:
    """A POST sent over a plain socket that the test can close whenever it likes, as a client that leaves."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
    )
    return sock


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


@pytest.fixture
def roomy(serve_factory) -> Iterator:
    with serve_factory(max_new_tokens=100_000, max_batch_size=16) as running:
        yield running


def test_clients_that_leave_free_their_batch_slots_within_a_forward_pass(roomy) -> None:
    long = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Tell a very long story."}],
            "max_tokens": 100_000, "temperature": 0}
    sockets = [raw_request(port_of(roomy.base_url), long) for _ in range(4)]
    client = openai.OpenAI(base_url=roomy.v1, api_key="unused", max_retries=0, timeout=60)
    streams = [client.chat.completions.create(**long, stream=True) for _ in range(2)]
    for stream in streams:
        next(iter(stream))
    wait_for(lambda: samples(roomy.base_url)["alpaca_serve_running_sequences"] == 6, "all six never ran together")

    for sock in sockets:
        sock.close()
    for stream in streams:
        stream.close()
    wait_for(lambda: samples(roomy.base_url)["alpaca_serve_running_sequences"] == 0, "abandoned sequences kept running")

    metrics = samples(roomy.base_url)
    # Each sequence left at the latest after the forward pass running when its client was found gone.
    assert metrics["alpaca_serve_abandoned_sequence_forwards_count"] == 6
    assert metrics['alpaca_serve_abandoned_sequence_forwards_bucket{le="1.0"}'] == 6
    # None of them reached its token limit, and the server still answers.
    assert metrics["alpaca_serve_generation_tokens_total"] < 6 * 100_000
    answer = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert answer.usage.completion_tokens == 3


class PoisonPrompt:
    """Makes the model's next-token logits NaN for any prefill row holding a marker text: a real
    fault in the real model, aimed at one request."""

    def __init__(self, loaded, marker: str) -> None:
        self.marker, self.tokenizer = marker, loaded.tokenizer
        self.rows: list[int] = []
        model = loaded.model
        self.hooks = [
            model.register_forward_pre_hook(self._find, with_kwargs=True),
            model.lm_head.register_forward_hook(self._poison),
        ]

    def _find(self, _module, _args, kwargs):
        ids = kwargs["input_ids"].tolist()
        self.rows = [r for r, row in enumerate(ids) if self.marker in self.tokenizer.decode(row)]

    def _poison(self, _module, _inputs, output):
        if self.rows:
            output = output.clone()
            output[self.rows] = float("nan")
        return output

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def test_a_request_whose_logits_go_bad_fails_alone(serve_factory, tiny_loaded) -> None:
    from concurrent.futures import ThreadPoolExecutor

    marker = "zebra quartz marker"
    with serve_factory() as running:
        client = openai.OpenAI(base_url=running.v1, api_key="unused", max_retries=0, timeout=60)

        def ask(content: str, **kwargs):
            return client.chat.completions.create(
                model=MODEL_NAME, messages=[{"role": "user", "content": content}], max_tokens=12, temperature=0, **kwargs
            )

        expected = [ask(f"Question number {i}?").choices[0].message.content for i in range(4)]
        poison = PoisonPrompt(tiny_loaded, marker)
        try:
            with ThreadPoolExecutor(6) as pool:
                healthy = [pool.submit(ask, f"Question number {i}?") for i in range(4)]
                bad = pool.submit(ask, f"Please {marker} now.")
                bad_stream = pool.submit(lambda: list(ask(f"Streamed {marker}.", stream=True)))
                assert [f.result().choices[0].message.content for f in healthy] == expected
                with pytest.raises(openai.InternalServerError, match="non-finite"):
                    bad.result()
                with pytest.raises(openai.APIError, match="non-finite"):
                    bad_stream.result()
        finally:
            poison.remove()
        assert samples(running.base_url)["alpaca_serve_running_sequences"] == 0


def post_raw(base_url: str, content: bytes, key: str | None = API_KEY) -> httpx.Response:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(base_url + "/v1/chat/completions", content=content, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ('"temperature": 1e-40', "temperature"),
        ('"temperature": NaN', "temperature"),
        ('"top_p": NaN', "top_p"),
        ('"temperature": Infinity', "temperature"),
        ('"presence_penalty": -Infinity', "presence_penalty"),
        ('"logit_bias": {"5": NaN}', "logit_bias"),
    ],
)
def test_sampling_values_that_cannot_give_finite_probabilities_are_400(server, raw: str, param: str) -> None:
    body = f'{{"model": "{MODEL_NAME}", "messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 2, {raw}}}'
    response = post_raw(server.base_url, body.encode())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith(param) and param in error["message"]


def test_bodies_over_the_limit_are_refused_before_they_are_read(serve_factory) -> None:
    small = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    with serve_factory(max_request_bytes=2000, api_key=API_KEY) as running:
        assert post_raw(running.base_url, json.dumps(small).encode()).status_code == 200
        big = json.dumps({**small, "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
        response = post_raw(running.base_url, big)
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

        def chunked() -> Iterator[bytes]:  # no Content-Length: counted while it arrives
            yield big[:1500]
            yield big[1500:]

        chunked_response = httpx.post(running.v1 + "/chat/completions", content=chunked(), timeout=30,
                                      headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        assert chunked_response.status_code == 413
        # A gigabyte announced and never sent: answered at once, so the body was never waited for.
        with socket.create_connection(("127.0.0.1", port_of(running.base_url)), timeout=30) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 1000000000\r\n\r\n{")
            assert sock.recv(200).startswith(b"HTTP/1.1 413")
        # Without the key nothing is read either: 401 comes first.
        assert post_raw(running.base_url, big, key=None).status_code == 401


def test_metrics_label_requests_by_route_template_not_raw_path(serve_factory) -> None:
    with serve_factory() as running:
        for _ in range(5):
            httpx.get(f"{running.base_url}/{uuid.uuid4().hex}")
            httpx.get(f"{running.v1}/models/{uuid.uuid4().hex}")
        text = httpx.get(running.base_url + "/metrics").text
        paths = {line.split('path="', 1)[1].split('"', 1)[0] for line in text.splitlines() if 'path="' in line}
        assert paths == {"unmatched", "/v1/models/{model:path}"}


def test_metrics_can_require_the_api_key(serve_factory) -> None:
    with serve_factory(api_key=API_KEY, metrics_auth=True) as running:
        assert httpx.get(running.base_url + "/metrics").status_code == 401
        ok = httpx.get(running.base_url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200 and "alpaca_serve_running_sequences" in ok.text
        assert httpx.get(running.base_url + "/healthz").status_code == 200
