from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from alpaca_jobs.train.data import IGNORE_INDEX, DatasetError, Record, read_records, tokenize
from alpaca_jobs.train.prompts import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, format_prompt


class CharTokenizer:
    """One token per character, BOS = 1, EOS = 2: enough to check every label by hand."""

    eos_token_id = 2

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
        bos = [1] if add_special_tokens else []
        return {"input_ids": [bos + [ord(c) for c in text] for text in texts]}


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_rows_and_skips_blank_lines(tmp_path: Path) -> None:
    rows = [{"instruction": "Say hi.", "input": "", "output": "hi"}, {"instruction": "Echo.", "input": "x", "output": "x"}]
    path = write(tmp_path / "d.jsonl", [json.dumps(rows[0]), "", json.dumps(rows[1])])
    assert read_records(path) == [Record("Say hi.", "", "hi", 1), Record("Echo.", "x", "x", 3)]


def test_reads_the_released_alpaca_layout_a_json_array(tmp_path: Path) -> None:
    # alpaca_data.json is one indented array; an output may hold a line separator (U+2028).
    rows = [{"instruction": "Say hi.", "input": "", "output": "hi\u2028there"}, {"instruction": "Echo.", "input": "x", "output": "x"}]
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(rows, indent=4, ensure_ascii=False))
    assert read_records(path) == [Record("Say hi.", "", "hi\u2028there", 0), Record("Echo.", "x", "x", 1)]
    lines = tmp_path / "d.jsonl"
    lines.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n")
    assert [r.output for r in read_records(lines)] == ["hi\u2028there", "x"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('[{"instruction": "Ok.", "output": "ok"}, {"instruction": "", "output": "x"}]', "[1]: field 'instruction' must be a non-empty string"),
        ('[{"instruction": "Ok.", "output": "ok"}, ["not", "an", "object"]]', "[1]: expected a JSON object"),
        ('[{"instruction": "Ok.",\n "output": }]', ":2: not valid JSON"),
    ],
)
def test_a_bad_row_of_an_array_is_named_by_its_index(tmp_path: Path, document: str, message: str) -> None:
    path = tmp_path / "data.json"
    path.write_text(document)
    with pytest.raises(DatasetError, match=re.escape(f"{path}{message}")):
        read_records(path)


def test_missing_input_field_means_no_input(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [json.dumps({"instruction": "Say hi.", "output": "hi"})])
    assert read_records(path)[0].input == ""


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "d.jsonl:2: not valid JSON"),
        ('["a list"]', "d.jsonl:2: expected a JSON object"),
        ('{"instruction": "", "output": "x"}', "d.jsonl:2: field 'instruction' must be a non-empty string"),
        ('{"instruction": "Do.", "output": 3}', "d.jsonl:2: field 'output' must be a non-empty string"),
        ('{"instruction": "Do.", "input": ["x"], "output": "y"}', "d.jsonl:2: field 'input' must be a string"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path / "d.jsonl", [json.dumps({"instruction": "Ok.", "output": "ok"}), line])
    with pytest.raises(DatasetError, match=message.replace("[", r"\[")):
        read_records(path)


def test_missing_and_empty_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope.jsonl: dataset file not found"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="empty.jsonl: dataset is empty"):
        read_records(write(tmp_path / "empty.jsonl", ["", "  "]))


def test_templates_differ_by_input_and_mention_every_part() -> None:
    assert format_prompt("Sort.", "b a") == PROMPT_WITH_INPUT.format(instruction="Sort.", input="b a")
    assert format_prompt("Sort.", "  ") == PROMPT_NO_INPUT.format(instruction="Sort.")
    assert "b a" in format_prompt("Sort.", "b a") and "Sort." in format_prompt("Sort.")


def test_labels_mask_exactly_the_prompt() -> None:
    record = Record("Add.", "1 2", "3", 1)
    [example], skipped = tokenize([record], CharTokenizer(), max_seq_length=512)
    prompt = [1] + [ord(c) for c in format_prompt("Add.", "1 2")]
    assert skipped == []
    assert list(example.input_ids) == prompt + [ord("3"), 2]
    assert list(example.labels) == [IGNORE_INDEX] * len(prompt) + [ord("3"), 2]
    assert example.num_targets == 2


def test_truncation_cuts_the_response_never_the_prompt() -> None:
    prompt_len = 1 + len(format_prompt("Echo."))
    records = [Record("Echo.", "", "abcdef", 1), Record("Echo." + "x" * 50, "", "a", 2)]
    examples, skipped = tokenize(records, CharTokenizer(), max_seq_length=prompt_len + 3)
    assert skipped == [2]
    assert len(examples[0]) == prompt_len + 3
    assert [t for t in examples[0].labels if t != IGNORE_INDEX] == [ord("a"), ord("b"), ord("c")]


def test_no_records_tokenize_to_nothing_with_a_fast_tokenizer() -> None:
    """A dataset too small to hold rows out gives an empty validation part; the fast tokenizer
    refuses an empty batch, so tokenize must not hand it one."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), eos_token="</s>", unk_token="<unk>"
    )
    assert tokenize([], tokenizer, max_seq_length=64) == ([], [])
