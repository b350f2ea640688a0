"""Structured output through the real openai client against `alpaca serve` with SmolLM2.

The model is the builtin SmolLM2-135M-Instruct: a small model that, unconstrained, rarely writes
the JSON asked of it, so an answer that validates is the grammar's doing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Annotated

import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.timeout(600)


class Colour(BaseModel):
    name: str = Field(max_length=24)
    hex_code: str = Field(pattern=r"^#[0-9a-f]{6}$")
    warm: bool


class Recipe(BaseModel):
    # Bounded, so that a sampled answer ends within max_tokens whatever the model rambles.
    title: str = Field(max_length=30)
    servings: int = Field(ge=1, le=12)
    steps: list[Annotated[str, Field(max_length=30)]] = Field(min_length=1, max_length=2)


@pytest.fixture(scope="module")
def smollm2():
    from alpaca_jobs.serve.loading import load
    from alpaca_operator.api.workloads import ResolvedModel

    return load(ResolvedModel(builtin="smollm2-135m-instruct"), device="cpu")


@pytest.fixture(scope="module")
def smol_server(smollm2, server_runner) -> Iterator:
    with server_runner(smollm2, max_new_tokens=160) as running:
        yield running


@pytest.fixture
def client(smol_server):
    import openai

    # Generous: the 2-core test machines are shared, and a step can take a second there.
    return openai.OpenAI(base_url=smol_server.v1, api_key="unused", max_retries=0, timeout=900)


@pytest.fixture(scope="module")
def model_name(smol_server) -> str:
    import httpx

    return httpx.get(smol_server.v1 + "/models").json()["data"][0]["id"]


def _parse(client, model_name: str, model: type[BaseModel], prompt: str, **kwargs):
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    return parse(model=model_name, messages=[{"role": "user", "content": prompt}], response_format=model,
                 max_tokens=150, **kwargs)


def test_parse_returns_the_pydantic_model(client, model_name: str) -> None:
    completion = _parse(client, model_name, Colour, "Describe the colour of a ripe tomato.", temperature=0)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Colour)
    assert Colour.model_validate_json(choice.message.content) == choice.message.parsed


def test_sampled_choices_all_validate(client, model_name: str) -> None:
    completion = _parse(client, model_name, Recipe, "Give me a recipe for pancakes.", temperature=1.0, seed=7, n=2)
    assert len(completion.choices) == 2
    for choice in completion.choices:
        assert choice.finish_reason == "stop", choice.message.content
        Recipe.model_validate_json(choice.message.content)


def test_json_object_mode_answers_an_object(client, model_name: str) -> None:
    # A few-shot prompt that a 135M model follows: it closes the object, and the grammar then ends the answer.
    prompt = ('Q: Is the sky blue?\nA: {"answer": "yes"}\nQ: Is fire cold?\nA: {"answer": "no"}\n'
              'Q: Is snow white?\nA:')
    response = client.completions.create(model=model_name, prompt=prompt, temperature=0, max_tokens=60,
                                         extra_body={"response_format": {"type": "json_object"}})
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice.text
    assert isinstance(json.loads(choice.text), dict)


def test_completions_endpoint_takes_a_schema_too(client, model_name: str) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
              "additionalProperties": False}
    response = client.completions.create(
        model=model_name, prompt="2 + 2 =", max_tokens=40, temperature=0,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "sum", "schema": schema}}},
    )
    assert set(json.loads(response.choices[0].text)) == {"answer"}


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "objekt"}}},
         "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "bad", "schema": {"$ref": "#/missing"}}},
         "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}, "response_format.json_schema.name"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "xml"}, "response_format.type"),
    ],
)
def test_invalid_formats_are_400_naming_the_field(client, model_name: str, response_format: dict, param: str) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "hi"}],
                                       response_format=response_format, max_tokens=5)
    error = caught.value.body
    assert error["param"] == param
    assert error["message"].startswith(param)


def test_unconstrained_neighbour_is_unchanged(client, model_name: str) -> None:
    """A constrained and an unconstrained request share decode steps; the plain one's greedy text is
    what it is alone."""
    plain = {"model": model_name, "messages": [{"role": "user", "content": "Name three rivers."}],
             "temperature": 0, "max_tokens": 40}
    alone = client.chat.completions.create(**plain).choices[0].message.content

    constrained_events: list[str] = []
    first = threading.Event()

    def constrained() -> None:
        stream = client.chat.completions.create(
            model=model_name, messages=[{"role": "user", "content": "Give me a recipe for soup."}],
            response_format={"type": "json_schema", "json_schema": {"name": "recipe", "schema": Recipe.model_json_schema()}},
            temperature=0, max_tokens=150, stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                constrained_events.append(chunk.choices[0].delta.content)
                first.set()
            if chunk.choices and chunk.choices[0].finish_reason:
                constrained_events.append(f"<finish:{chunk.choices[0].finish_reason}>")
        first.set()

    worker = threading.Thread(target=constrained)
    worker.start()
    assert first.wait(300)
    running_before = len(constrained_events)
    together = client.chat.completions.create(**plain).choices[0].message.content
    running_after = len(constrained_events)
    worker.join(300)

    # The constrained stream was still producing while the plain request ran: they shared the batch.
    assert not any(e.startswith("<finish") for e in constrained_events[:running_after])
    assert running_after > running_before
    assert together == alone
    assert constrained_events[-1] == "<finish:stop>"
    Recipe.model_validate_json("".join(constrained_events[:-1]))
