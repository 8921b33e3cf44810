"""Typed user-facing errors: each carries a message and a hint the CLI prints on one line."""

from __future__ import annotations

MAX_ERROR_CHARS = 300


class JanusError(Exception):
    """An error the user can act on; `hint` says how."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(JanusError):
    """A config file, preset or flag is invalid."""


class PromptError(JanusError):
    """A prompt file is missing, unreadable or holds no usable prompt."""


class ModelError(JanusError):
    """A checkpoint is missing or cannot be loaded."""


class RunDirError(JanusError):
    """The run directory cannot be created, written or read."""


def one_line(err: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """A library error as one short line: whitespace collapsed, polars' advice dropped, truncated."""
    msg = str(err)
    if "Original error:" in msg:
        msg = msg.split("Original error:", 1)[1]
    msg = " ".join(msg.replace("`", "").split()) or type(err).__name__
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


class JudgeServerError(JanusError):
    """A judge server cannot be reached, keeps failing, or rejects the API key."""
