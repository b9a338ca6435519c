"""Typed errors. A `UserError` carries a message written for the person who caused it.

Front ends show `UserError.message` as it is (ephemerally on Discord, on stderr in the CLI); anything else is
a bug and is logged, never shown.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: the message says what was wrong and what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ImageError(UserError):
    """An attachment is not a usable picture (wrong type, too big, broken, ...)."""


class MaskError(UserError):
    """The fill area cannot be worked out or makes no sense (empty, wrong size, ...)."""


class ParameterError(UserError):
    """An option is outside what the chosen provider accepts."""


class ConfigError(Exception):
    """The operator's configuration is wrong; raised at start-up, naming the variable."""


class ProviderError(UserError):
    """A provider refused or failed a job. `kind` lets front ends choose wording and retry behaviour.

    Kinds: auth, billing, rate_limited, invalid_input, unavailable, bad_response, failed, moderated,
    canceled, expired, timed_out, maybe_submitted, not_found.
    """

    def __init__(self, kind: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after
