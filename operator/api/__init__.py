"""The API of alpaca.dev/v1alpha1: pydantic models of every spec and status.

These models are the single source of truth: the CRDs are generated from them, the operator
validates with them, and the workloads read their configuration through them.
"""

from .base import API_VERSION, GROUP, VERSION
from .common import Condition, ConditionStatus, ModelSource, Phase, Storage
from .evaluation import Evaluation, EvaluationSpec, EvaluationStatus
from .finetune import FineTune, FineTuneSpec, FineTuneStatus
from .instructdataset import InstructDataset, InstructDatasetSpec, InstructDatasetStatus
from .modelserver import ModelServer, ModelServerSpec, ModelServerStatus, ServerPhase

__all__ = [
    "API_VERSION", "GROUP", "VERSION", "Condition", "ConditionStatus", "ModelSource", "Phase", "Storage",
    "FineTune", "FineTuneSpec", "FineTuneStatus", "InstructDataset", "InstructDatasetSpec",
    "InstructDatasetStatus", "ModelServer", "ModelServerSpec", "ModelServerStatus", "ServerPhase",
    "Evaluation", "EvaluationSpec", "EvaluationStatus",
]
