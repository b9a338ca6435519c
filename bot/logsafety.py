"""Log lines made safe to keep, whichever library wrote them: secrets redacted, payloads capped.

Third-party loggers write what they hold: discord.py puts interaction and webhook tokens in URLs and, at DEBUG,
whole request payloads (prompts, uploaded pictures) in one line; httpcore and hpack write headers. One filter on
the root handlers sees every line that reaches a log, so nothing depends on each caller remembering to redact.
"""

from __future__ import annotations

import logging
import re

# Lines longer than this are cut: a log line is for reading, and a long one is a payload (an upload, a data URI).
MAX_LINE = 2000
# Loggers that write request and response payloads or headers at DEBUG: held at INFO when LOG_LEVEL=DEBUG, so
# DEBUG means the bot's own detail. Their INFO and WARNING lines (rate limits, reconnects) still show, redacted.
WIRE_LOGGERS = ("discord.http", "discord.gateway", "discord.webhook", "discord.client", "httpcore", "hpack", "PIL")

_REDACTED = "[redacted]"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Discord webhook and interaction URLs carry their token as a path segment.
    (re.compile(r"(/(?:webhooks|interactions)/\d+/)[^/\s?#'\"]+"), rf"\g<1>{_REDACTED}"),
    # Headers, in any printed form: `Authorization: Bot x`, `'x-key': 'y'`, `(b'authorization', b'Bearer z')`.
    (
        re.compile(
            r"(\b(?:authorization|x-key|x-api-key|api-key|cookie|set-cookie)\b['\"]?\s*(?:[:=,]\s*b?['\"]?|\s+))"
            r"(?:(?:Bot|Bearer|Token|Key|Basic)\s+)?[^\s'\",;}\)]+",
            re.IGNORECASE,
        ),
        rf"\g<1>{_REDACTED}",
    ),
    # Credentials in query strings and form bodies.
    (
        re.compile(
            r"(\b(?:token|key|api_key|apikey|access_token|signature|sig|secret|password|x-amz-signature"
            r"|x-amz-credential|x-amz-security-token)=)[^&\s'\"]+",
            re.IGNORECASE,
        ),
        rf"\g<1>{_REDACTED}",
    ),
    (re.compile(r"\br8_[A-Za-z0-9]{8,}"), "r8_" + _REDACTED),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), "whsec_" + _REDACTED),
    # Discord bot tokens: base64 user id, timestamp and HMAC separated by dots.
    (re.compile(r"\b[A-Za-z\d_-]{23,28}\.[A-Za-z\d_-]{6,7}\.[A-Za-z\d_-]{27,}\b"), _REDACTED),
    # Picture bytes: data URIs and long base64 runs say nothing a reader needs.
    (re.compile(r"data:[\w/+.-]*;base64,[A-Za-z0-9+/=]{64,}"), "data:…;base64,[picture]"),
    (re.compile(r"[A-Za-z0-9+/]{256,}={0,2}"), "[base64]"),
)


def redact(text: str, cap: int = MAX_LINE) -> str:
    """`text` without credentials or picture bytes, at most `cap` characters (plus a note of what was cut)."""
    if len(text) > cap * 8:  # never run the patterns over megabytes: the tail is dropped anyway
        text = text[: cap * 8]
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text if len(text) <= cap else text[:cap] + f"…[cut at {cap} chars]"


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback text) through `redact` before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what can be kept rather than lose the line
            message = f"{record.msg!s} (unformattable arguments)"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, cap=MAX_LINE * 4)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, cap=MAX_LINE * 4)
        return True


def install(level: str) -> None:
    """Redact every root handler's lines and, at DEBUG, hold the wire loggers at INFO. Call once, right after
    `logging.basicConfig`."""
    safety = RedactingFilter()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(safety)
    if logging.getLevelName(level) == logging.DEBUG:
        for name in WIRE_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
