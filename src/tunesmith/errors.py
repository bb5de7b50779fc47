"""User-facing errors.

A `UserError` is a mistake the user can fix (bad path, bad config, bad data). The CLI prints its
message and hint and exits non-zero without a traceback; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(Exception):
    def __init__(self, message: str, hint: str | None = None, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class ModelNotFound(UserError):
    pass


class TrainingDiverged(UserError):
    pass
