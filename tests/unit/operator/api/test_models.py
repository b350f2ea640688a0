"""The API models: Alpaca's defaults, camelCase on the wire, validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from support.manifests import VALID

from alpaca_operator.api import FineTune, FineTuneSpec, InstructDataset, InstructDatasetSpec, ModelServer
from alpaca_operator.api.common import BuiltinModel


def test_finetune_defaults_are_the_alpaca_recipe() -> None:
    spec = FineTuneSpec.model_validate({"dataset": {"uri": "s3://d/data.jsonl"}, "output": {"uri": "s3://m/out"}})
    hp = spec.hyperparameters
    assert (hp.epochs, hp.learning_rate, hp.global_batch_size, hp.max_seq_length) == (3, 2e-5, 128, 512)
    assert (hp.warmup_ratio, hp.lr_scheduler.value, hp.precision.value, hp.weight_decay) == (0.03, "cosine", "bf16", 0.0)
    assert spec.base_model.builtin is BuiltinModel.SMOLLM2_135M_INSTRUCT


def test_instruct_dataset_defaults_are_the_alpaca_recipe() -> None:
    spec = InstructDatasetSpec.model_validate(VALID["InstructDataset"]()["spec"] | {"generation": {}})
    assert spec.generation.num_examples == 52000
    assert spec.generation.seed_tasks_per_prompt == 3
    assert spec.generation.instructions_per_request == 20
    assert (spec.generation.temperature, spec.generation.top_p) == (1.0, 1.0)
    assert spec.filters.rouge_l_threshold == 0.7
    assert "flowchart" in spec.filters.blacklist


@pytest.mark.parametrize("model", [InstructDataset, FineTune, ModelServer])
def test_wire_form_round_trips(model: type) -> None:
    document = VALID[model.__name__]()
    parsed = model.model_validate(document)
    wire = parsed.spec.to_wire()
    assert model.model_validate({**document, "spec": wire}).spec == parsed.spec
    # camelCase on the wire, acronyms upper-case as Kubernetes spells them.
    assert all("_" not in key for key in wire)


def test_acronyms_are_spelled_the_kubernetes_way() -> None:
    spec = InstructDatasetSpec.model_validate(VALID["InstructDataset"]()["spec"]).to_wire()
    assert "budgetUSD" in spec and "baseURL" in spec["teacher"]
    assert "inputUSDPerMillionTokens" in spec["teacher"]["pricing"]


def test_snake_case_is_accepted_in_python() -> None:
    spec = FineTuneSpec(dataset={"uri": "s3://d/x.jsonl"}, output={"uri": "s3://m/o"}, budget_usd=10)
    assert spec.budget_usd == 10


def test_unknown_spec_field_is_rejected_by_name() -> None:
    with pytest.raises(ValidationError, match="epoch"):
        FineTuneSpec.model_validate({"dataset": {"uri": "s3://d/x"}, "output": {"uri": "s3://m/o"}, "epoch": 3})
