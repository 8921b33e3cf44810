"""`janus generate`: images (and, with --introspect, the model's own evaluation and redraws) from a checkpoint."""

from __future__ import annotations

from janus_cli.common import fail, user_errors


@user_errors
def generate() -> None:
    """Images from a Janus-Pro checkpoint (work in progress)."""
    raise fail("janus generate is not built yet", 2)
