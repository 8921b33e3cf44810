"""`janus eval judge`: a prompt set scored by the run's judge."""

from __future__ import annotations

from janus_cli.common import fail, user_errors


@user_errors
def judge() -> None:
    """Judge-based scores (work in progress)."""
    raise fail("janus eval judge is not built yet", 2)
