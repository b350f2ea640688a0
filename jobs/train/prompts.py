"""The two prompt templates a model is trained with: one for tasks with extra material, one without.

The serving side must format requests the same way, so this module is the single place they live.
"""

from __future__ import annotations

PROMPT_WITH_INPUT = (
    "Here is a task, together with material to work from. "
    "Carry out the task using the material and answer helpfully.\n\n"
    "### Task:\n{instruction}\n\n"
    "### Material:\n{input}\n\n"
    "### Answer:\n"
)

PROMPT_NO_INPUT = (
    "Here is a task. Carry it out and answer helpfully.\n\n"
    "### Task:\n{instruction}\n\n"
    "### Answer:\n"
)


def format_prompt(instruction: str, input_text: str = "") -> str:
    """The prompt for one example; a blank input selects the shorter template."""
    if input_text.strip():
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return PROMPT_NO_INPUT.format(instruction=instruction)


# Written next to a tuned model so the server formats requests with the templates it learned.
MARKER_FILE = "alpaca_prompt.json"


def marker() -> dict[str, str]:
    return {"format": "alpaca", "withInput": PROMPT_WITH_INPUT, "noInput": PROMPT_NO_INPUT}
