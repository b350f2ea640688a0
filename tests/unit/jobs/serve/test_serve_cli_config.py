import argparse
import json
from pathlib import Path

import pytest

from alpaca_jobs.serve import cli
from alpaca_jobs.serve.errors import field_path


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_alone_serve_the_builtin_model_on_localhost() -> None:
    config = cli.build_config(parse())
    assert config.model.builtin == "smollm2-135m-instruct"
    assert (config.host, config.port, config.served_model_name) == ("127.0.0.1", 8000, "smollm2-135m-instruct")
    folder = cli.build_config(parse("--model", "/models/my-tune/", "--max-batch-size", "4"))
    assert folder.model.location == "/models/my-tune/" and folder.served_model_name == "my-tune"
    assert folder.spec.batching.max_batch_size == 4


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({
        "name": "demo", "servedModelName": "demo", "model": {"location": "/m"}, "apiKeyEnv": "KEY",
        "spec": {"model": {"source": {"builtin": "smollm2-135m-instruct"}}, "batching": {"maxQueue": 3}},
    }))
    config = cli.build_config(parse("--config", str(path), "--port", "9001", "--max-new-tokens", "64"))
    assert (config.host, config.port, config.api_key_env) == ("0.0.0.0", 9001, "KEY")
    assert (config.spec.batching.max_queue, config.spec.batching.max_new_tokens) == (3, 64)


def test_an_invalid_config_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"name": "demo", "servedModelName": "d", "model": {}, "spec": {}, "port": 0}))
    with pytest.raises(SystemExit, match=r"serve.json.*(?s:.*)port"):
        cli.build_config(parse("--config", str(path)))


def test_a_named_but_empty_key_variable_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_KEY", "")
    with pytest.raises(SystemExit, match="SERVE_KEY"):
        cli.read_api_key("SERVE_KEY")
    monkeypatch.setenv("SERVE_KEY", "s3cret")
    assert cli.read_api_key("SERVE_KEY") == "s3cret"
    assert cli.read_api_key(None) is None


def test_error_params_name_fields_not_pydantic_types() -> None:
    assert field_path(("body", "messages", 0, "role")) == "messages[0].role"
    assert field_path(("body", "stop", "list[str]", 4)) == "stop[4]"
    assert field_path(("body",)) == "body"


@pytest.mark.parametrize(("argv", "flag"), [(("--metrics-port", "70000"), "--metrics-port"),
                                            (("--max-batch-size", "0"), "--max-batch-size")])
def test_an_out_of_range_flag_is_named(argv: tuple[str, ...], flag: str) -> None:
    with pytest.raises(SystemExit, match=f"{flag}: Input should be"):
        cli.build_config(parse(*argv))


def test_the_metrics_port_flag_lands_in_the_config() -> None:
    assert cli.build_config(parse("--metrics-port", "9090")).metrics_port == 9090
    assert cli.build_config(parse()).metrics_port is None
