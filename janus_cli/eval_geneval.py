"""`janus eval geneval`: GenEval's protocol on one or more checkpoints."""

from __future__ import annotations

from janus_cli.common import fail, user_errors


@user_errors
def geneval() -> None:
    """GenEval (work in progress)."""
    raise fail("janus eval geneval is not built yet", 2)
