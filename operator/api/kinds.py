"""The four kinds and their names in the API: one table that the CRDs, RBAC and clients share."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from .evaluation import Evaluation, EvaluationSpec, EvaluationStatus
from .finetune import FineTune, FineTuneSpec, FineTuneStatus
from .instructdataset import InstructDataset, InstructDatasetSpec, InstructDatasetStatus
from .modelserver import ModelServer, ModelServerSpec, ModelServerStatus


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    resource: type[BaseModel]
    spec: type[BaseModel]
    status: type[BaseModel]


INSTRUCT_DATASET = Kind(
    "InstructDataset", "instructdatasets", "instructdataset", ("ids",),
    InstructDataset, InstructDatasetSpec, InstructDatasetStatus,
)
FINE_TUNE = Kind("FineTune", "finetunes", "finetune", ("ft",), FineTune, FineTuneSpec, FineTuneStatus)
MODEL_SERVER = Kind(
    "ModelServer", "modelservers", "modelserver", ("ms",), ModelServer, ModelServerSpec, ModelServerStatus,
)

EVALUATION = Kind(
    "Evaluation", "evaluations", "evaluation", ("eval",), Evaluation, EvaluationSpec, EvaluationStatus,
)

KINDS: tuple[Kind, ...] = (INSTRUCT_DATASET, FINE_TUNE, MODEL_SERVER, EVALUATION)
BY_KIND: dict[str, Kind] = {k.kind: k for k in KINDS}
