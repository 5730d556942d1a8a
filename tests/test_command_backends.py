"""manage.py backends [--check]."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command


def test_lists_every_backend_with_its_model_and_breaker(capsys) -> None:  # type: ignore[no-untyped-def]
    call_command("backends")
    out = capsys.readouterr().out
    assert "echo*" in out and "slow-echo" in out and "closed" in out


def test_check_generates_on_each_backend_and_fails_on_a_broken_one(capsys, settings) -> None:  # type: ignore[no-untyped-def]
    settings.ORCHESTRATOR_BACKENDS = {
        "echo": settings.ORCHESTRATOR_BACKENDS["echo"],
        "failing": settings.ORCHESTRATOR_BACKENDS["failing"],
    }
    with pytest.raises(CommandError, match="failing"):
        call_command("backends", "--check")
    out = capsys.readouterr().out
    assert "ok " in out and "'Say OK.'" in out
    assert "FAILED: upstream said no" in out
