"""Typed user-facing errors: each carries a message and a hint the CLI prints on one line."""

from __future__ import annotations


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
