"""crds/*.yaml are generated from the models: fail when someone forgets to regenerate."""

from __future__ import annotations

from pathlib import Path

from alpaca_operator.crd.generate import render_all

CRDS = Path(__file__).resolve().parents[4] / "crds"


def test_committed_crds_match_the_models() -> None:
    stale = [name for name, text in render_all().items() if (CRDS / name).read_text() != text]
    assert not stale, f"stale CRDs {stale}: run `alpaca crds --output-dir crds`"
