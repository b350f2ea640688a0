"""Prompt building and reading the teacher's numbered list back."""

from __future__ import annotations

import json

import pytest

from alpaca_jobs.generate.parse import (
    MALFORMED,
    PAST_LAST_SLOT,
    TRUNCATED,
    parse_completion,
    parse_structured,
    stop_sequence,
)
from alpaca_jobs.generate.prompt import (
    NO_INPUT,
    Task,
    build_prompt,
    build_structured_prompt,
    choose_examples,
    request_rng,
    task_schema,
)

EXAMPLES = [
    Task("Name three primary colours.", "", "Red, yellow and blue."),
    Task("Fix the spelling in this sentence.", "I recieved teh letter.", "I received the letter."),
]


def test_prompt_numbers_the_examples_and_opens_the_next_slot() -> None:
    prompt = build_prompt(EXAMPLES, total_slots=20)
    assert "Tasks 1 to 20:" in prompt
    assert "1. Instruction: Name three primary colours.\n1. Input:\n<noinput>\n1. Output:\nRed, yellow and blue.\n" in prompt
    assert "2. Input:\nI recieved teh letter.\n" in prompt
    assert prompt.endswith("###\n3. Instruction:")
    assert prompt.count("###\n") == 3


def test_prompt_needs_a_free_slot() -> None:
    with pytest.raises(ValueError, match="no slot free"):
        build_prompt(EXAMPLES, total_slots=2)


def test_choose_examples_is_reproducible_per_request_and_mixes_in_generated_tasks() -> None:
    seeds = [Task(f"Seed task number {i}.", "", "ok") for i in range(50)]
    generated = [Task(f"Generated task number {i}.", "", "ok") for i in range(10)]
    first = choose_examples(seeds, generated, 3, 2, request_rng(0, 7))
    again = choose_examples(seeds, generated, 3, 2, request_rng(0, 7))
    other = choose_examples(seeds, generated, 3, 2, request_rng(0, 8))
    assert first == again
    assert first != other
    assert sum(t in seeds for t in first) == 3
    assert sum(t in generated for t in first) == 2
    # Early on there are fewer generated tasks than asked for: show what there is.
    assert len(choose_examples(seeds, generated[:1], 3, 2, request_rng(0, 1))) == 4
    assert len(choose_examples(seeds, [], 3, 2, request_rng(0, 1))) == 3


def _item(n: int, instruction: str, text_input: str = NO_INPUT, output: str = "An answer.") -> str:
    return f"{n}. Instruction: {instruction}\n{n}. Input:\n{text_input}\n{n}. Output:\n{output}\n"


def test_parse_a_completion_that_continues_the_open_slot() -> None:
    text = " Explain why the sky looks blue.\n3. Input:\n<noinput>\n3. Output:\nRayleigh scattering.\n###\n" + _item(
        4, "Sort these numbers.", "3, 1, 2", "1, 2, 3"
    )
    items = parse_completion(text, first_slot=3, truncated=False)
    assert [i.task for i in items] == [
        Task("Explain why the sky looks blue.", "", "Rayleigh scattering."),
        Task("Sort these numbers.", "3, 1, 2", "1, 2, 3"),
    ]


def test_parse_a_completion_that_repeats_the_open_slot_header() -> None:
    text = _item(3, "Give a synonym for happy.") + "###\n" + _item(4, "Give an antonym for cold.")
    items = parse_completion(text, first_slot=3, truncated=False)
    assert [i.task.instruction for i in items if i.task] == ["Give a synonym for happy.", "Give an antonym for cold."]


def test_multiline_fields_keep_their_lines_and_instructions_are_one_line() -> None:
    text = _item(3, "Rewrite this\n  list as prose.", "- milk\n- eggs", "Buy milk\nand eggs.")
    (item,) = parse_completion(text, first_slot=3, truncated=False)
    assert item.task == Task("Rewrite this list as prose.", "- milk\n- eggs", "Buy milk\nand eggs.")


def test_the_last_item_is_dropped_when_the_completion_was_cut() -> None:
    text = _item(3, "Define entropy.") + "###\n" + _item(4, "Define enthalpy.")
    items = parse_completion(text, first_slot=3, truncated=True)
    assert items[0].task is not None
    assert items[1].task is None and items[1].problem == TRUNCATED


@pytest.mark.parametrize(
    "block",
    [
        "Just chatting, no tasks here.",
        "3. Instruction: Missing the rest.\n",
        "3. Instruction: Out of order.\n3. Output:\nx\n3. Input:\ny\n",
        "3. Instruction: Twice.\n3. Input:\nx\n3. Output:\ny\n3. Output:\nz\n",
        "3. Instruction:\n3. Input:\nx\n3. Output:\ny\n",  # empty instruction
        "3. Instruction: No output.\n3. Input:\nx\n3. Output:\n   \n",
        "3. Instruction: Input only, the answer in it.\n3. Input:\nThe answer.\n",
        "3. Instruction: Fields of other items.\n1. Input: A, B\n2. Output: A.\n",
    ],
)
def test_malformed_items_are_reported_not_raised(block: str) -> None:
    items = parse_completion(block, first_slot=3, truncated=False)
    assert [i.problem for i in items] == [MALFORMED]


def test_a_preamble_is_malformed_and_the_item_after_it_is_still_read() -> None:
    items = parse_completion("Preamble first.\n3. Instruction: A.\n3. Input:\nx\n3. Output:\ny\n", first_slot=3, truncated=False)
    assert [i.problem for i in items] == [MALFORMED, None]
    assert items[1].task == Task("A.", "x", "y")


@pytest.mark.parametrize("separator", ["###\n", "\n-----\n\n", "\n", "***\n", ""])
def test_an_item_starts_at_its_header_whatever_separates_it(separator: str) -> None:
    text = _item(3, "Define entropy.", output="Disorder.") + separator + _item(4, "Define enthalpy.", "water", "Heat content.")
    items = parse_completion(text, first_slot=3, truncated=False)
    assert [i.task for i in items] == [Task("Define entropy.", "", "Disorder."), Task("Define enthalpy.", "water", "Heat content.")]


def test_an_item_without_an_input_field_has_an_empty_input() -> None:
    text = " Name a prime number.\n3. Output:\nSeven.\n-----\n4. Instruction: Name an even prime.\n4. Output:\nTwo.\n"
    items = parse_completion(text, first_slot=3, truncated=False)
    assert [i.task for i in items] == [Task("Name a prime number.", "", "Seven."), Task("Name an even prime.", "", "Two.")]


def test_blank_blocks_between_separators_are_not_items() -> None:
    text = _item(3, "List two prime numbers.") + "###\n\n###\n"
    assert len(parse_completion(text, first_slot=3, truncated=False)) == 1


def test_items_numbered_past_the_last_slot_were_not_asked_for() -> None:
    text = "###\n".join(_item(n, f"Name a country whose name starts with the letter {c}.") for n, c in zip(range(18, 23), "ABCDE"))
    items = parse_completion(text, first_slot=18, truncated=False, last_slot=20)
    assert [i.problem for i in items] == [None, None, None, PAST_LAST_SLOT, PAST_LAST_SLOT]
    # Without a cap (older callers), every well-formed item is read.
    assert all(i.task for i in parse_completion(text, first_slot=18, truncated=False))


def test_the_stop_sequence_ends_the_list_at_its_last_slot_and_nowhere_else() -> None:
    steps = "Boil water.\n2. Add tea.\n21. Wait three minutes."  # a numbered list inside an output
    completion = _item(19, "Define a haiku.") + "###\n" + _item(20, "Explain how to brew tea.", output=steps) + "###\n" + _item(21, "Extra.")
    assert completion.find(stop_sequence(20)) == completion.index("###\n21. Instruction") + len("###")


def test_structured_answer_is_read_as_json_tasks() -> None:
    text = json.dumps({"tasks": [
        {"instruction": "Name  a river.", "input": "<noinput>", "output": "The Nile."},
        {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"},
        {"instruction": "", "input": "", "output": "nothing asked"},
        {"instruction": "One too many.", "input": "", "output": "x"},
    ]})
    items = parse_structured(text, 3, truncated=False)
    assert [i.task.as_record() if i.task else i.problem for i in items] == [
        {"instruction": "Name a river.", "input": "", "output": "The Nile."},
        {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"},
        MALFORMED,
        PAST_LAST_SLOT,
    ]


def test_structured_answer_cut_short_keeps_its_whole_tasks() -> None:
    whole = '{"tasks": [{"instruction": "Say hi.", "input": "", "output": "Hi."}, '
    items = parse_structured(whole + '{"instruction": "Say b', 5, truncated=True)
    assert items[0].task is not None and items[0].task.output == "Hi." and items[1].problem == TRUNCATED
    # Not cut by the limit, yet not JSON: the rest is malformed, not truncated.
    assert parse_structured(whole + "oops", 5, truncated=False)[1].problem == MALFORMED
    for text in ("I cannot help with that.", "[]", '{"tasks": 3}', '{"tasks": [{"instruction": 1}]}'):
        assert all(item.problem == MALFORMED for item in parse_structured(text, 5, truncated=False)), text


def test_structured_prompt_shows_examples_as_json_and_the_schema_bounds_the_answer() -> None:
    examples = [Task("Name a colour.", "", "Blue."), Task("Sum these.", "1, 2", "3")]
    prompt = build_structured_prompt(examples, 7)
    assert "Write 7 new tasks." in prompt
    shown = json.loads(prompt[prompt.index("{"): prompt.rindex("}") + 1])
    assert shown == {"tasks": [t.as_record() for t in examples]}
    schema = task_schema(7)
    assert schema["properties"]["tasks"]["maxItems"] == 7 and schema["additionalProperties"] is False
    task = schema["properties"]["tasks"]["items"]["properties"]
    assert task["instruction"]["pattern"] == task["output"]["pattern"] == r"\S" and "pattern" not in task["input"]
    with pytest.raises(ValueError):
        build_structured_prompt(examples, 0)


def test_a_list_header_started_again_after_the_last_item_is_not_part_of_its_output() -> None:
    text = _item(3, "Name a season.", output="Winter.\n\nTasks 9 to 18:\n###\n")
    (item,) = parse_completion(text, first_slot=3, truncated=False)
    assert item.task == Task("Name a season.", "", "Winter.")
    # Only a header on a line of its own and at the end: a sentence that mentions tasks stays.
    text = _item(3, "Plan a day.", output="Tasks 1 to 3: wake, work, sleep.")
    assert parse_completion(text, first_slot=3, truncated=False)[0].task.output == "Tasks 1 to 3: wake, work, sleep."
