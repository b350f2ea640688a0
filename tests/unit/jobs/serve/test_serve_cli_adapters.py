"""`alpaca serve --adapter NAME=PATH`: adapters from flags, beside those of a config file."""

import argparse
import json
from pathlib import Path

import pytest

from alpaca_jobs.serve import cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_adapter_flags_name_folders_and_uris(tmp_path: Path) -> None:
    config = cli.build_config(parse("--model", "/models/base", "--adapter", f"fr={tmp_path}", "--adapter", "de=s3://b/de/adapter"))
    assert [(a.name, a.location) for a in config.adapters] == [("fr", str(tmp_path)), ("de", "s3://b/de/adapter")]


def test_adapter_flags_add_to_the_config_files_adapters(tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({
        "name": "demo", "servedModelName": "demo", "model": {"location": "/m"},
        "adapters": [{"name": "fr", "location": "/adapters/fr"}],
        "spec": {"model": {"source": {"uri": "s3://b/base"}}},
    }))
    config = cli.build_config(parse("--config", str(path), "--adapter", "de=/adapters/de"))
    assert [a.name for a in config.adapters] == ["fr", "de"]


@pytest.mark.parametrize("value", ["fr", "=path", "fr="])
def test_a_malformed_adapter_flag_says_what_it_expects(value: str) -> None:
    with pytest.raises(SystemExit, match="NAME=PATH"):
        cli.build_config(parse("--adapter", value))
