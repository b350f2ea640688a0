"""examples/alpaca-7b: valid as the cluster would judge it, and its README's costs are the ones the
operator's own cost model computes."""

from __future__ import annotations

from pathlib import Path

import yaml

from alpaca_operator.builders import modelserver
from alpaca_operator.builders.finetune import active_deadline_seconds, total_gpus
from alpaca_operator.cli import main
from alpaca_operator.cost import hourly_rate, token_cost
from alpaca_operator.manifests import load
from alpaca_operator.settings import OperatorSettings

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "alpaca-7b"
README = (EXAMPLE / "README.md").read_text()

# The README's stated assumptions for generation.
REQUESTS, PROMPT_TOKENS, COMPLETION_TOKENS = 11_400, 480, 1_700
ALPACA_TRAINING_HOURS = 3


def resources() -> dict[str, object]:
    return {m.kind: m.resource.spec for m in load([EXAMPLE])}


def settings() -> OperatorSettings:
    # The operator-side half of the example: what helm/values.yaml puts into the settings.
    values = yaml.safe_load((EXAMPLE / "helm" / "values.yaml").read_text())
    return OperatorSettings.model_validate(
        {"gpuHourUSD": values["prices"]["gpuHourUSD"], "tokenPrices": values["prices"]["tokens"], "gpuPools": values["gpuPools"]}
    )


def test_alpaca_validate_accepts_the_example(capsys: object) -> None:
    assert main(["validate", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    for line in ("InstructDataset 'alpaca-52k' is valid", "FineTune 'alpaca-7b' is valid", "ModelServer 'alpaca-7b-chat' is valid"):
        assert line in out


def test_the_example_is_the_alpaca_recipe() -> None:
    specs = resources()
    dataset, tune, server = specs["InstructDataset"], specs["FineTune"], specs["ModelServer"]
    assert dataset.generation.num_examples == 52_000  # type: ignore[attr-defined]
    assert dataset.generation.seed_tasks_per_prompt == 3 and dataset.generation.instructions_per_request == 20  # type: ignore[attr-defined]
    assert dataset.teacher.pricing.input_usd_per_million_tokens > 0  # type: ignore[attr-defined]
    hp = tune.hyperparameters  # type: ignore[attr-defined]
    assert (hp.epochs, hp.learning_rate, hp.global_batch_size, hp.max_seq_length) == (3, 2e-5, 128, 512)
    assert (hp.warmup_ratio, hp.lr_scheduler.value, hp.weight_decay, hp.precision.value) == (0.03, "cosine", 0.0, "bf16")
    assert total_gpus(tune) == 8 and tune.gpus.type == "nvidia-a100-80gb" and tune.method.value == "full"  # type: ignore[attr-defined]
    assert server.runtime.value == "vllm" and server.model.fine_tune_ref.name == "alpaca-7b"  # type: ignore[attr-defined]
    # The teacher's prices in the manifest and in the operator's table are the same published ones.
    assert settings().token_price("gpt-4.1-mini") == dataset.teacher.pricing  # type: ignore[attr-defined]


def test_readme_costs_are_the_cost_models() -> None:
    specs = resources()
    dataset, tune, server = specs["InstructDataset"], specs["FineTune"], specs["ModelServer"]
    chosen = settings()

    pricing = dataset.teacher.pricing  # type: ignore[attr-defined]
    generation = token_cost(REQUESTS * PROMPT_TOKENS, REQUESTS * COMPLETION_TOKENS, pricing)
    prompt_only = token_cost(REQUESTS * PROMPT_TOKENS, 0, pricing)
    completion_only = token_cost(0, REQUESTS * COMPLETION_TOKENS, pricing)
    rate = hourly_rate(total_gpus(tune), chosen.gpu_price(tune.gpus.type))  # type: ignore[attr-defined]
    training = rate * ALPACA_TRAINING_HOURS
    serving = modelserver.replica_rate(server, chosen)  # type: ignore[arg-type]

    for figure in (prompt_only, completion_only, generation, rate, training, serving, serving * 24, generation + training):
        assert f"${figure:,.2f}" in README, f"README.md lacks ${figure:,.2f}"
    assert f"{active_deadline_seconds(tune, chosen)} seconds" in README  # type: ignore[arg-type]
    # The budgets leave room above the projection but stop a runaway.
    assert generation < dataset.budget_usd < 5 * generation  # type: ignore[attr-defined]
    assert training < tune.budget_usd < 5 * training  # type: ignore[attr-defined]
