"""FineTune.spec.promptTemplate and the validation hyperparameters: defaults and refusals that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from alpaca_operator.api.finetune import Hyperparameters, PromptTemplate


def test_templates_with_their_placeholders_are_taken_as_written() -> None:
    template = PromptTemplate.model_validate({"withInput": 'Do "{instruction}" on {input} {"json": 1}', "withoutInput": "Do {instruction}. {}"})
    assert template.to_wire() == {"withInput": 'Do "{instruction}" on {input} {"json": 1}', "withoutInput": "Do {instruction}. {}"}


@pytest.mark.parametrize(
    ("wire", "field", "complaint"),
    [
        ({"withInput": "{instruction}", "withoutInput": "{instruction}"}, "withInput", "{input}"),
        ({"withInput": "{input}", "withoutInput": "{instruction}"}, "withInput", "{instruction}"),
        ({"withInput": "{instruction} {input}", "withoutInput": "{instruction} {input}"}, "withoutInput", "must not contain {input}"),
        ({"withInput": "{instruction} {input}", "withoutInput": "{instructions}"}, "withoutInput", "unknown placeholder {instructions}"),
        ({"withInput": "{instruction} {input}"}, "withoutInput", "required"),
    ],
)
def test_templates_missing_or_misspelling_a_placeholder_are_refused(wire: dict[str, str], field: str, complaint: str) -> None:
    with pytest.raises(ValidationError) as raised:
        PromptTemplate.model_validate(wire)
    error = raised.value.errors()[0]
    assert error["loc"][-1] in {field, field.replace("I", "_i")} and complaint.lower() in error["msg"].lower()


def test_a_few_percent_are_held_out_by_default_and_at_most_half() -> None:
    defaults = Hyperparameters()
    assert (defaults.validation_fraction, defaults.eval_every_steps) == (0.03, 100)
    assert Hyperparameters.model_validate({"validationFraction": 0}).validation_fraction == 0
    with pytest.raises(ValidationError, match="validationFraction|validation_fraction"):
        Hyperparameters.model_validate({"validationFraction": 0.6})
    with pytest.raises(ValidationError, match="evalEverySteps|eval_every_steps"):
        Hyperparameters.model_validate({"evalEverySteps": 0})
