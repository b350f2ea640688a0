"""The grammar module alone, with SmolLM2's real tokenizer: masks, acceptance, independence."""

from __future__ import annotations

import json

import pytest
import torch

from alpaca_jobs.serve.grammar import GrammarCompiler, GrammarError

SCHEMA = {
    "type": "array", "minItems": 1, "maxItems": 2,
    "items": {"type": "object", "additionalProperties": False, "required": ["instruction", "output"],
              "properties": {"instruction": {"type": "string"}, "output": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def tokenizer():
    from alpaca_jobs.models import builtin_files, load_tokenizer

    return load_tokenizer(builtin_files("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def compiler(tokenizer) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, [tokenizer.eos_token_id])


def _schema(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


def test_a_valid_document_is_accepted_then_only_eos(tokenizer, compiler) -> None:
    grammar = compiler.compile(_schema(SCHEMA)).matcher()
    text = json.dumps([{"instruction": "Say hi.", "output": "Hi \"there\"."}], separators=(",", ":"))
    for token in tokenizer.encode(text, add_special_tokens=False):
        assert grammar.allowed()[token]
        grammar.accept(token)
    allowed = grammar.allowed()
    assert allowed.nonzero().flatten().tolist() == [tokenizer.eos_token_id]


def test_mask_forbids_what_the_schema_does_not_allow(tokenizer, compiler) -> None:
    grammar = compiler.compile(_schema(SCHEMA)).matcher()
    for token in tokenizer.encode('[{"instruction":', add_special_tokens=False):
        grammar.accept(token)
    logits = torch.zeros(len(tokenizer) + 7)  # models may pad their vocabulary past the tokenizer's
    masked = grammar.mask(logits)
    digit = tokenizer.encode("1", add_special_tokens=False)[0]
    quote = tokenizer.encode('"', add_special_tokens=False)[0]
    assert masked[digit] == float("-inf")
    assert masked[quote] == 0
    assert torch.isinf(masked[len(tokenizer):]).all()
    with pytest.raises(ValueError, match="not allowed"):
        grammar.accept(digit)


def test_each_sequence_keeps_its_own_state(tokenizer, compiler) -> None:
    compiled = compiler.compile({"type": "json_object"})
    assert compiler.compile({"type": "json_object"}) is compiled  # compiled once, shared
    first, second = compiled.matcher(), compiled.matcher()
    for token in tokenizer.encode('{"a":1}', add_special_tokens=False):
        first.accept(token)
    assert first.finished and not second.finished
    open_brace = tokenizer.encode("{", add_special_tokens=False)[0]
    assert second.allowed()[open_brace] and not first.allowed()[open_brace]


def test_text_needs_no_grammar(compiler) -> None:
    assert compiler.compile({"type": "text"}) is None


@pytest.mark.parametrize("schema", [{"type": "objekt"}, {"$ref": "#/nowhere"}, {"type": "string", "pattern": "("},
                                    {"type": "integer", "minimum": "zero"}])
def test_invalid_schema_names_the_field(compiler, schema: dict) -> None:
    with pytest.raises(GrammarError) as caught:
        compiler.compile(_schema(schema))
    assert caught.value.param == "response_format.json_schema.schema"
    assert str(caught.value).startswith("response_format.json_schema.schema: ")
