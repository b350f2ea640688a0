"""Where a teacher API key may be sent: a table of base URLs and operator settings."""

from __future__ import annotations

import pytest

from alpaca_operator.settings import OperatorSettings
from alpaca_operator.teacher_hosts import refusal


@pytest.mark.parametrize(
    ("url", "allowed", "allow_link_local", "refused"),
    [
        ("https://api.openai.com/v1", [], False, None),
        ("http://169.254.169.254/latest/meta-data", [], False, "link-local"),
        ("http://[fe80::1]:8080/v1", [], False, "link-local"),
        ("http://[fd00:ec2::254]/v1", [], False, "link-local"),
        ("http://[::ffff:169.254.169.254]/v1", [], False, "link-local"),
        ("http://metadata.google.internal/computeMetadata/v1", [], False, "metadata"),
        ("http://METADATA.google.internal./x", [], False, "metadata"),
        ("http://169.254.10.10:8000/v1", [], True, None),
        ("https://api.openai.com/v1", ["*.example.com"], False, "not among"),
        ("https://llm.example.com/v1", ["*.example.com", "api.openai.com"], False, None),
        ("https://198.51.100.7/v1", ["198.51.100.*"], False, None),
    ],
)
def test_refusal(url: str, allowed: list[str], allow_link_local: bool, refused: str | None) -> None:
    why = refusal(url, allowed=allowed, allow_link_local=allow_link_local)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why and "teacher.baseURL" in why


def test_the_default_settings_refuse_metadata_addresses() -> None:
    hosts = OperatorSettings().teacher_hosts
    assert hosts.allowed == [] and hosts.allow_link_local is False
    assert OperatorSettings.model_validate({"teacherHosts": {"allowed": ["api.openai.com"]}}).teacher_hosts.allowed == ["api.openai.com"]
