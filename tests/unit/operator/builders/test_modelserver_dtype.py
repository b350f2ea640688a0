"""ModelServer spec.dtype: the flag each runtime gets, in the cluster and in local mode, and its refusal for llama-cpp."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from alpaca_jobs.serve.cli import add_arguments
from alpaca_operator.api.modelserver import ModelServerSpec
from alpaca_operator.api.workloads import ResolvedModel, ServeConfig
from alpaca_operator.builders import modelserver
from alpaca_operator.builders.common import Parent
from alpaca_operator.builders.inputs import model_source
from alpaca_operator.local.runner import serve_command
from alpaca_operator.manifests import ManifestError, parse
from alpaca_operator.settings import OperatorSettings

SETTINGS = OperatorSettings()
FOLDER = {"source": {"uri": "s3://models/base"}}
BUILTIN = {"source": {"builtin": "smollm2-135m-instruct"}}


def command(**spec: Any) -> list[str]:
    parsed = ModelServerSpec.model_validate(spec)
    model, mounts = model_source(parsed.model.source)
    _, deployment, _ = modelserver.build(Parent("chat", "ns", "modelservers", 1), parsed, SETTINGS, model, mounts)
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    return list(server["command"])


def alpaca_serve_flags(argv: list[str]) -> argparse.Namespace:
    """The arguments as `alpaca serve` itself parses them."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_alpaca_serve_gets_the_dtype_it_parses(dtype: str) -> None:
    argv = command(model=FOLDER, dtype=dtype)
    assert argv[:2] == ["alpaca", "serve"]
    assert alpaca_serve_flags(argv[2:]).dtype == dtype


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_vllm_gets_the_dtype(dtype: str) -> None:
    argv = command(model=FOLDER, runtime="vllm", gpusPerReplica=1, dtype=dtype)
    assert argv[:2] == ["vllm", "serve"]
    assert argv.count("--dtype") == 1
    assert argv[argv.index("--dtype") + 1] == dtype


@pytest.mark.parametrize(("runtime", "gpus"), [("transformers", 0), ("vllm", 1), ("llama-cpp", 0)])
def test_auto_is_the_default_and_adds_no_flag(runtime: str, gpus: int) -> None:
    model = BUILTIN if runtime == "llama-cpp" else FOLDER
    assert ModelServerSpec.model_validate({"model": model}).dtype.value == "auto"
    assert "--dtype" not in command(model=model, runtime=runtime, gpusPerReplica=gpus)
    assert "--dtype" not in command(model=model, runtime=runtime, gpusPerReplica=gpus, dtype="auto")


def server(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "alpaca.dev/v1alpha1", "kind": "ModelServer", "metadata": {"name": "s"}, "spec": spec}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_llama_cpp_refuses_a_dtype_naming_the_field(dtype: str) -> None:
    with pytest.raises(ManifestError, match=r"spec\.dtype: .*GGUF file"):
        parse("s.yaml", server(model=BUILTIN, runtime="llama-cpp", dtype=dtype))
    parse("s.yaml", server(model=BUILTIN, runtime="llama-cpp", dtype="auto"))
    parse("s.yaml", server(model=BUILTIN, dtype=dtype))


def test_an_unknown_dtype_is_refused_with_the_allowed_ones() -> None:
    with pytest.raises(ManifestError, match=r"spec\.dtype.*'auto', 'float32', 'bfloat16' or 'float16'"):
        parse("s.yaml", server(model=BUILTIN, dtype="int8"))


def test_local_mode_starts_alpaca_serve_with_the_dtype(tmp_path: Path) -> None:
    def config(dtype: str) -> ServeConfig:
        spec = ModelServerSpec.model_validate({"model": BUILTIN, "dtype": dtype})
        return ServeConfig(name="s", spec=spec, model=ResolvedModel(builtin="smollm2-135m-instruct"),
                           served_model_name="s", host="127.0.0.1")

    path = tmp_path / "serve.json"
    argv = serve_command(config("bfloat16"), path)
    start = argv.index("serve") + 1
    parsed = alpaca_serve_flags(argv[start:])
    assert (parsed.config, parsed.dtype) == (path, "bfloat16")
    assert "--dtype" not in serve_command(config("auto"), path)
