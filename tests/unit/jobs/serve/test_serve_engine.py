"""The engine driven step by step: clients that leave cost at most the forward pass in flight,
and a sequence whose logits go bad fails alone while the rest of its batch carries on."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alpaca_jobs.serve.engine import Engine, Event, RequestHandle
from alpaca_jobs.serve.sampling import SamplingParams


@pytest.fixture(scope="module")
def tokenizer():
    from alpaca_jobs.models import builtin_files, load_tokenizer

    return load_tokenizer(builtin_files("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def model(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


class Driver:
    """An engine whose steps the test takes, and the event loop its handles report to."""

    def __init__(self, model, tokenizer) -> None:
        self.loop = asyncio.new_event_loop()
        self.abandoned: list[int] = []
        self.engine = Engine(model, tokenizer, on_abandon=self.abandoned.append)
        self.tokenizer = tokenizer

    def submit(self, text: str, max_tokens: int) -> RequestHandle:
        prompt = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.engine.submit([prompt], SamplingParams(max_tokens=max_tokens, temperature=0), 1, self.loop)

    def events(self, handle: RequestHandle) -> list[Event]:
        self.loop.run_until_complete(asyncio.sleep(0))  # deliver what the engine pushed
        out = []
        while not handle.events.empty():
            out.append(handle.events.get_nowait())
        return out

    def run_to_end(self) -> None:
        while self.engine.running or self.engine.waiting:
            self.engine.step()

    def close(self) -> None:
        self.loop.close()


def answer(events: list[Event]) -> tuple[str, str | None]:
    return "".join(e.text for e in events), events[-1].finish_reason if events else None


@pytest.fixture
def driver(model, tokenizer):
    made = Driver(model, tokenizer)
    yield made
    made.close()


def alone(driver: Driver, text: str, max_tokens: int) -> tuple[str, str | None]:
    handle = driver.submit(text, max_tokens)
    driver.run_to_end()
    return answer(driver.events(handle))


def test_a_cancelled_request_leaves_the_batch_before_the_next_forward_pass(driver: Driver) -> None:
    expected = alone(driver, "Tell me about llamas.", 30)
    stays = driver.submit("Tell me about llamas.", 30)
    leaves = driver.submit("Write a long essay.", 4000)
    driver.engine.step()  # both prefilled together, then one decode step
    driver.engine.step()
    assert driver.engine.running == 2
    forwards = driver.engine.forwards
    leaves.cancel()  # what the server does when the client's connection closes
    driver.engine.step()
    assert driver.engine.running == 1
    assert driver.engine.forwards == forwards + 1  # the one decode pass was for the row that stays
    assert driver.abandoned == [0]
    driver.run_to_end()
    assert answer(driver.events(stays)) == expected
    assert all(e.finish_reason is None for e in driver.events(leaves))  # nothing ended it but the client


def test_queued_requests_whose_clients_left_are_never_prefilled(driver: Driver) -> None:
    handle = driver.submit("Never mind.", 10)
    handle.cancel()
    forwards = driver.engine.forwards
    driver.run_to_end()
    assert driver.engine.forwards == forwards and driver.engine.waiting == 0


class PoisonRow:
    """Turns chosen rows of the model's next-token logits into NaN: a real fault in a real model."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        self.rows: set[int] = set()
        self.hook = model.lm_head.register_forward_hook(self._poison)

    def _poison(self, _module, _inputs, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row in self.rows:
            if row < output.shape[0]:
                output[row] = float("nan")
        return output

    def remove(self) -> None:
        self.hook.remove()


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_nan_in_one_sequence_fails_only_its_request(driver: Driver, model, phase: str) -> None:
    expected = alone(driver, "Give three tips for staying healthy.", 25)
    healthy = driver.submit("Give three tips for staying healthy.", 25)
    poisoned = driver.submit("What is the capital of France?", 25)
    poison = PoisonRow(model)
    try:
        if phase == "prefill":
            poison.rows = {1}  # the second row of the joint prefill
            driver.engine.step()
        else:
            driver.engine.step()
            driver.engine.step()
            poison.rows = {1}
            driver.engine.step()
        poison.rows = set()
        driver.run_to_end()
    finally:
        poison.remove()
    failed = driver.events(poisoned)
    assert failed[-1].finish_reason == "error" and "non-finite" in (failed[-1].error or "")
    assert answer(driver.events(healthy)) == expected
    # The engine carries on serving.
    assert alone(driver, "What is the capital of France?", 5)[1] == "length"


def test_arrivals_join_running_streams_within_the_prefill_budget(model, tokenizer) -> None:
    driver = Driver(model, tokenizer)
    driver.engine.max_prefill_tokens_while_decoding = 40
    try:
        first = driver.submit("Start streaming now.", 50)
        driver.engine.step()
        assert driver.engine.running == 1
        prompt = "word " * 30  # 30 tokens each: one fits the budget, two do not
        late = [driver.submit(prompt, 5) for _ in range(3)]
        driver.engine.step()
        assert (driver.engine.running, driver.engine.waiting) == (2, 2)
        driver.engine.step()
        assert (driver.engine.running, driver.engine.waiting) == (3, 1)
        driver.run_to_end()
        assert all(answer(driver.events(h))[1] == "length" for h in [first, *late])
    finally:
        driver.close()


def test_an_idle_engine_admits_a_burst_up_to_the_full_budget(model, tokenizer) -> None:
    driver = Driver(model, tokenizer)
    driver.engine.max_prefill_tokens_while_decoding = 40
    try:
        for _ in range(3):
            driver.submit("word " * 30, 5)
        driver.engine.step()
        assert (driver.engine.running, driver.engine.waiting) == (3, 0)
    finally:
        driver.close()
