"""The chart's files agree with the code they package: CRDs, version, default images."""

from __future__ import annotations

from pathlib import Path

import yaml

from alpaca_operator import __version__
from alpaca_operator.settings import Images

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "alpaca-operator"


def test_chart_crds_are_the_generated_ones() -> None:
    generated = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    packaged = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert set(packaged) == set(generated), "charts/alpaca-operator/crds/ and crds/ hold different files"
    stale = [name for name in generated if packaged[name] != generated[name]]
    assert not stale, f"charts/alpaca-operator/crds/ differs from crds/ for {stale}: cp crds/*.yaml charts/alpaca-operator/crds/"


def test_leader_election_defaults_are_the_operators() -> None:
    from alpaca_operator.settings import LeaderElection

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    election = values["leaderElection"]
    defaults = LeaderElection()
    assert election["enabled"] is True and values["replicaCount"] == 2
    assert election["leaseDurationSeconds"] == defaults.lease_duration_seconds
    assert election["renewDeadlineSeconds"] == defaults.renew_deadline_seconds
    assert election["retryPeriodSeconds"] == defaults.retry_period_seconds


def test_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__


def test_default_workload_images_are_the_operators_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    images = values["workloads"]["images"]
    defaults = Images()
    for name, field in (("generate", "generate"), ("train", "train"), ("serve", "serve"), ("vllm", "vllm"),
                        ("llamaCpp", "llama_cpp")):
        image = images[name]
        rendered = f"{image['repository']}:{image['tag'] or __version__}"
        assert rendered == getattr(defaults, field), f"values.yaml workloads.images.{name} renders {rendered}"
    assert values["workloads"]["pullPolicy"] == defaults.pull_policy


def test_operator_image_matches_the_dockerfile_user() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    dockerfile = (ROOT / "images" / "operator" / "Dockerfile").read_text()
    user = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")][-1]
    uid, _, gid = user.partition(":")
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(gid)
