"""Valid manifests of each kind, and invalid variants with the field each one breaks.

The same table drives the unit tests (local validation) and the integration tests (the real API
server), so both layers are held to the same answers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Manifest = dict[str, Any]


def instruct_dataset(name: str = "alpaca-data") -> Manifest:
    return {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "InstructDataset",
        "metadata": {"name": name},
        "spec": {
            "teacher": {
                "baseURL": "https://api.example.com/v1",
                "model": "teacher-mini",
                "apiKeySecretRef": {"name": "teacher-key", "key": "api-key"},
                "pricing": {"inputUSDPerMillionTokens": 0.15, "outputUSDPerMillionTokens": 0.6},
            },
            "generation": {"numExamples": 1000},
            "budgetUSD": 25,
            "output": {"pvc": {"claimName": "alpaca-data", "subPath": "datasets/alpaca"}},
        },
    }


def fine_tune(name: str = "alpaca-7b") -> Manifest:
    return {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "FineTune",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "s3://models/llama-7b"},
            "dataset": {"instructDatasetRef": {"name": "alpaca-data"}},
            "hyperparameters": {"microBatchSize": 4},
            "gpus": {"nodes": 1, "perNode": 8, "type": "nvidia-a100-80gb"},
            "output": {"uri": "s3://models/alpaca-7b"},
        },
    }


def model_server(name: str = "alpaca-chat") -> Manifest:
    return {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": name},
        "spec": {"model": {"fineTuneRef": {"name": "alpaca-7b"}}, "runtime": "vllm", "gpusPerReplica": 1},
    }


VALID: dict[str, Callable[[], Manifest]] = {
    "InstructDataset": instruct_dataset,
    "FineTune": fine_tune,
    "ModelServer": model_server,
}


@dataclass(frozen=True)
class Invalid:
    """A valid manifest broken in one place; `field` must appear in the error."""

    id: str
    kind: str
    change: Callable[[Manifest], None]
    field: str

    def manifest(self) -> Manifest:
        document = copy.deepcopy(VALID[self.kind]())
        self.change(document)
        return document


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    def change(document: Manifest) -> None:
        *parents, leaf = path.split(".")
        node = document
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    return change


def _delete(path: str) -> Callable[[Manifest], None]:
    def change(document: Manifest) -> None:
        *parents, leaf = path.split(".")
        node = document
        for part in parents:
            node = node[part]
        del node[leaf]

    return change


INVALID: tuple[Invalid, ...] = (
    Invalid("wrong-type", "InstructDataset", _set("spec.generation.numExamples", "lots"), "spec.generation.numExamples"),
    Invalid("out-of-range", "InstructDataset", _set("spec.generation.seedTasksPerPrompt", 0), "spec.generation.seedTasksPerPrompt"),
    Invalid("negative-budget", "InstructDataset", _set("spec.budgetUSD", -5), "spec.budgetUSD"),
    Invalid("missing-teacher", "InstructDataset", _delete("spec.teacher"), "spec.teacher"),
    Invalid("rouge-threshold-above-1", "InstructDataset", _set("spec.filters.rougeLThreshold", 1.5), "spec.filters.rougeLThreshold"),
    Invalid(
        "cel-two-teachers", "InstructDataset", _set("spec.teacher.modelServerRef", {"name": "chat"}),
        "exactly one of baseURL or modelServerRef",
    ),
    Invalid(
        # VALID has budgetUSD; an in-cluster teacher's cost is the ModelServer's, so no budget holds.
        "cel-budget-with-in-cluster-teacher", "InstructDataset", _set("spec.teacher", {"modelServerRef": {"name": "chat"}}),
        "budgetUSD cannot be enforced with teacher.modelServerRef",
    ),
    Invalid(
        "cel-batch-with-in-cluster-teacher", "InstructDataset",
        _set("spec.teacher", {"modelServerRef": {"name": "chat"}, "batch": {"requestsPerBatch": 100}}),
        "batch needs an API teacher",
    ),
    Invalid(
        "cel-storage-both", "InstructDataset", _set("spec.output.uri", "s3://bucket/data"),
        "exactly one of pvc or uri",
    ),
    Invalid(
        "cel-no-slot-left", "InstructDataset", _set("spec.generation.instructionsPerRequest", 3),
        "spec.generation.instructionsPerRequest",
    ),
    Invalid(
        "cel-prompt-template-two-sources", "InstructDataset",
        _set("spec.promptTemplate", {"uri": "s3://bucket/prompt.txt", "configMapRef": {"name": "prompts", "key": "p"}}),
        "exactly one of configMapRef, pvc or uri",
    ),
    Invalid("cel-prompt-template-no-source", "InstructDataset", _set("spec.promptTemplate", {}), "exactly one of configMapRef, pvc or uri"),
    Invalid(
        "prompt-template-uri-scheme", "InstructDataset", _set("spec.promptTemplate", {"uri": "ftp://host/prompt.txt"}),
        "spec.promptTemplate.uri",
    ),
    Invalid("unknown-enum", "FineTune", _set("spec.method", "qlora"), "spec.method"),
    Invalid("missing-reference-name", "FineTune", _set("spec.dataset.instructDatasetRef", {}), "spec.dataset.instructDatasetRef.name"),
    Invalid("cel-missing-reference", "FineTune", _set("spec.dataset", {}), "exactly one of instructDatasetRef, uri or pvc"),
    Invalid("zero-learning-rate", "FineTune", _set("spec.hyperparameters.learningRate", 0), "spec.hyperparameters.learningRate"),
    Invalid(
        "cel-batch-not-multiple", "FineTune", _set("spec.hyperparameters.globalBatchSize", 130),
        "spec.hyperparameters.globalBatchSize",
    ),
    Invalid("cel-lora-without-method", "FineTune", _set("spec.lora", {"r": 16}), "lora is only allowed with method: lora"),
    Invalid(
        "prompt-template-without-input-placeholder", "FineTune",
        _set("spec.promptTemplate", {"withInput": "Do {instruction}.", "withoutInput": "Do {instruction}."}),
        "spec.promptTemplate.withInput",
    ),
    Invalid(
        "prompt-template-input-in-no-input-template", "FineTune",
        _set("spec.promptTemplate", {"withInput": "{instruction} {input}", "withoutInput": "{instruction} {input}"}),
        "spec.promptTemplate.withoutInput",
    ),
    Invalid("bad-uri-scheme", "FineTune", _set("spec.output.uri", "ftp://models/x"), "spec.output.uri"),
    # The images carry no filesystem for Google Cloud Storage: refused here, not in the pod.
    Invalid("unwritable-uri-scheme", "FineTune", _set("spec.output.uri", "gs://models/x"), "spec.output.uri"),
    Invalid("negative-replicas", "ModelServer", _set("spec.replicas", -1), "spec.replicas"),
    Invalid("bad-reference-name", "ModelServer", _set("spec.model.fineTuneRef.name", "Not_A_Name"), "spec.model.fineTuneRef.name"),
    Invalid("cel-vllm-needs-gpu", "ModelServer", _set("spec.gpusPerReplica", 0), "spec.gpusPerReplica"),
    Invalid("unknown-runtime", "ModelServer", _set("spec.runtime", "tgi"), "spec.runtime"),
    Invalid("unknown-dtype", "ModelServer", _set("spec.dtype", "int8"), "spec.dtype"),
    Invalid(
        "cel-llama-cpp-dtype", "ModelServer",
        _set("spec", {"model": {"source": {"builtin": "smollm2-135m-instruct"}}, "runtime": "llama-cpp", "dtype": "bfloat16"}),
        "spec.dtype",
    ),
)
