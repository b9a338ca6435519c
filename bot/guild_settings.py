"""Per-server settings that moderators tune, with declared defaults and a description for each entry.

Values are checked here (ranges, known providers, combinations) so the settings command, storage and the job path
agree on what is valid. `effective_safety` turns a server's single 0–6 level into each provider's own controls.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bot.errors import UserError
from bot.params import SPECS, Value
from bot.providers.registry import ORDINARY_SAFETY_MAX, PROVIDER_NAMES, PROVIDERS, SAFETY_MAX, SAFETY_MIN

log = logging.getLogger(__name__)

FLAGGED_OUTPUT_ACTIONS = ("withhold", "spoiler")
CHANNEL_MODES = ("all", "list")
MAX_COOLDOWN_SECONDS = 86_400
MAX_CONCURRENT = 20
MAX_DAILY_QUOTA = 100_000
MAX_LISTED_CHANNELS = 100
# The most images any model makes per job, so this limit never promises more than a provider can give.
MAX_OUTPUTS = max(
    int(f.maximum) for spec in SPECS for f in spec.fields if f.name == "outputs" and f.maximum is not None
)


class SettingsError(UserError):
    """A moderator asked for a setting value that is not allowed; the message names the key and the range."""


@dataclass(frozen=True)
class GuildSettings:
    """One server's settings. Defaults are the behaviour of a server that never changed anything."""

    safety: int = 2
    nsfw_safety: int = 4
    flagged_outputs: str = "withhold"
    allowed_providers: tuple[str, ...] = ()
    default_provider: str | None = None
    max_outputs: int = 4
    cooldown_seconds: int = 0
    max_concurrent_per_user: int = 2
    daily_quota_per_user: int = 0
    daily_quota_per_guild: int = 0
    channel_mode: str = "all"
    channels: tuple[int, ...] = ()
    gallery_channel_id: int | None = None
    log_channel_id: int | None = None


SETTING_DESCRIPTIONS: dict[str, str] = {
    "safety": f"Content safety level in normal channels: 0 strictest … {ORDINARY_SAFETY_MAX}. Users cannot go above "
    f"it; levels above {ORDINARY_SAFETY_MAX} are for age-restricted channels only.",
    "nsfw_safety": f"Safety level in age-restricted (NSFW) channels, 0 … {SAFETY_MAX}; at least `safety`. "
    f"Only at {SAFETY_MAX} is Replicate's NSFW checker turned off.",
    "flagged_outputs": "What to do with images a provider flags as NSFW: `withhold` (drop them with a notice) or "
    "`spoiler` (post them spoilered, in age-restricted channels only).",
    "allowed_providers": "Providers members may use; empty means every configured provider.",
    "default_provider": "Provider used when a member does not pick one; not set means the bot's default.",
    "max_outputs": f"Most images per job (1–{MAX_OUTPUTS}).",
    "cooldown_seconds": f"Seconds a member waits between starting jobs (0–{MAX_COOLDOWN_SECONDS}; 0 = none).",
    "max_concurrent_per_user": f"Jobs one member may have running at once (1–{MAX_CONCURRENT}).",
    "daily_quota_per_user": "Jobs one member may start in any 24 hours in this server (0 = unlimited).",
    "daily_quota_per_guild": "Jobs the whole server may start in any 24 hours (0 = unlimited).",
    "channel_mode": "`all`: the commands work in every channel; `list`: only in the listed `channels`.",
    "channels": f"Channels where the commands work when `channel_mode` is `list` (at most {MAX_LISTED_CHANNELS}).",
    "gallery_channel_id": "Channel where finished images are also posted; not set means no gallery.",
    "log_channel_id": "Channel for moderation notices (blocked prompts, settings changes); not set means none.",
}

SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GuildSettings))
DEFAULTS = GuildSettings()
# A DM has no moderators: it runs under the declared defaults (safety, outputs, concurrency; no cooldown or
# server quota), inside the operator's rules (`bot.config.OperatorRules`: DM providers, quota, caps, terms).
DM_SETTINGS = DEFAULTS


def _bad(key: str, value: object, allowed: str) -> SettingsError:
    return SettingsError(f"`{key}` = {format_value(value)} is not allowed: use {allowed}.")


def _whole(lo: int, hi: int) -> Callable[[str, object], int]:
    def check(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _bad(key, value, f"a whole number from {lo} to {hi}")
        return value

    return check


def _choice(options: Sequence[str]) -> Callable[[str, object], str]:
    def check(key: str, value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise _bad(key, value, "one of " + ", ".join(options))
        return value

    return check


def _snowflake(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise _bad(key, value, "a channel")
    return value


def _optional_snowflake(key: str, value: object) -> int | None:
    return None if value is None else _snowflake(key, value)


def _provider(key: str, value: object) -> str:
    if not isinstance(value, str) or value not in PROVIDER_NAMES:
        raise _bad(key, value, "one of " + ", ".join(PROVIDER_NAMES))
    return value


def _optional_provider(key: str, value: object) -> str | None:
    return None if value is None else _provider(key, value)


def _providers(key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _bad(key, value, "a list of providers: " + ", ".join(PROVIDER_NAMES))
    names = tuple(dict.fromkeys(_provider(key, v) for v in value))
    return tuple(n for n in PROVIDER_NAMES if n in names)  # stable order, so equal lists compare equal


def _channels(key: str, value: object) -> tuple[int, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _bad(key, value, "a list of channels")
    ids = tuple(dict.fromkeys(_snowflake(key, v) for v in value))
    if len(ids) > MAX_LISTED_CHANNELS:
        raise SettingsError(f"`{key}` lists {len(ids)} channels; at most {MAX_LISTED_CHANNELS} are allowed.")
    return ids


_CHECKS: dict[str, Callable[[str, object], object]] = {
    "safety": _whole(SAFETY_MIN, ORDINARY_SAFETY_MAX),
    "nsfw_safety": _whole(SAFETY_MIN, SAFETY_MAX),
    "flagged_outputs": _choice(FLAGGED_OUTPUT_ACTIONS),
    "allowed_providers": _providers,
    "default_provider": _optional_provider,
    "max_outputs": _whole(1, MAX_OUTPUTS),
    "cooldown_seconds": _whole(0, MAX_COOLDOWN_SECONDS),
    "max_concurrent_per_user": _whole(1, MAX_CONCURRENT),
    "daily_quota_per_user": _whole(0, MAX_DAILY_QUOTA),
    "daily_quota_per_guild": _whole(0, MAX_DAILY_QUOTA),
    "channel_mode": _choice(CHANNEL_MODES),
    "channels": _channels,
    "gallery_channel_id": _optional_snowflake,
    "log_channel_id": _optional_snowflake,
}
assert set(_CHECKS) == set(SETTING_NAMES) == set(SETTING_DESCRIPTIONS), "every setting needs a check and a description"


def check_value(key: str, value: object) -> object:
    """Return `value` in its canonical form (lists become sorted/deduplicated tuples) or raise SettingsError."""
    check = _CHECKS.get(key)
    if check is None:
        raise SettingsError(f"There is no setting called `{key}`; the settings are: {', '.join(SETTING_NAMES)}.")
    return check(key, value)


def _check_combination(settings: GuildSettings) -> None:
    """Rules between keys. NSFW channels may be looser than normal ones, never stricter: a stricter NSFW level
    would be a surprise, so raising `safety` above `nsfw_safety` asks for both to be changed together."""
    if settings.nsfw_safety < settings.safety:
        raise SettingsError(
            f"`nsfw_safety` ({settings.nsfw_safety}) cannot be below `safety` ({settings.safety}): age-restricted "
            "channels may be looser than normal ones, not stricter. Change both together."
        )
    if (
        settings.default_provider is not None
        and settings.allowed_providers
        and settings.default_provider not in settings.allowed_providers
    ):
        raise SettingsError(
            f"`default_provider` ({settings.default_provider}) must be one of `allowed_providers` "
            f"({', '.join(settings.allowed_providers)})."
        )
    if settings.channel_mode == "list" and not settings.channels:
        raise SettingsError(
            "`channel_mode` = list needs at least one channel in `channels`, or the commands would work nowhere; "
            "set both together."
        )


def apply_changes(current: GuildSettings, changes: Mapping[str, object]) -> GuildSettings:
    """The settings after `changes`, each value and the result as a whole checked; raises SettingsError."""
    canonical = {key: check_value(key, value) for key, value in changes.items()}
    updated = dataclasses.replace(current, **canonical)  # type: ignore[arg-type]  # values checked above
    _check_combination(updated)
    return updated


def settings_from_stored(values: Mapping[str, object]) -> GuildSettings:
    """Build settings from stored values, falling back to the default for any key that is unknown or no longer
    valid (a removed provider, a changed range), so a stale row never stops a server from working."""
    good: dict[str, object] = {}
    for key, value in values.items():
        if key not in _CHECKS:
            log.warning("ignoring unknown stored setting %r", key)
            continue
        try:
            good[key] = check_value(key, value)
        except SettingsError as exc:
            log.warning("ignoring stored setting %s: %s", key, exc.message)
    return dataclasses.replace(DEFAULTS, **good)  # type: ignore[arg-type]  # values checked above


_ID = re.compile(r"^<?#?(\d{15,21})>?$")
_NONE_WORDS = frozenset({"", "none", "off", "unset", "default", "-"})


def parse_setting(key: str, text: str) -> object:
    """Turn what a moderator typed into a value for `key` (lists comma- or space-separated, channel mentions
    accepted, "none" clears an optional value); the result still goes through `apply_changes`."""
    if key not in _CHECKS:
        check_value(key, None)  # raises the "no such setting" error
    default = getattr(DEFAULTS, key)
    words = [w for w in re.split(r"[\s,]+", text.strip()) if w]
    if isinstance(default, tuple):
        if text.strip().lower() in _NONE_WORDS:
            return ()
        if key == "channels":
            return tuple(_parse_id(key, w) for w in words)
        return tuple(w.lower() for w in words)
    raw = text.strip()
    if key in ("default_provider", "gallery_channel_id", "log_channel_id") and raw.lower() in _NONE_WORDS:
        return None
    if key.endswith("_channel_id"):
        return _parse_id(key, raw)
    if isinstance(default, int):
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise SettingsError(f"`{key}` = {raw!r} is not a whole number.") from None
    return raw.lower()


def _parse_id(key: str, word: str) -> int:
    match = _ID.match(word)
    if match is None:
        raise SettingsError(f"`{key}`: {word!r} is not a channel; mention it (#channel) or paste its id.")
    return int(match.group(1))


# What an empty list means, where it is not "nothing": an empty `allowed_providers` allows every provider.
_EMPTY_MEANS = {"allowed_providers": "all configured providers"}


def format_value(value: object, key: str | None = None) -> str:
    """Plain text for a value in `show`, errors and the audit log; pass `key` so an empty list reads as what it
    means for that setting."""
    if value is None:
        return "not set"
    if isinstance(value, tuple | list):
        return ", ".join(str(v) for v in value) if value else _EMPTY_MEANS.get(key or "", "none")
    return str(value)


def channel_allowed(settings: GuildSettings, channel_id: int) -> bool:
    """Whether the commands work in `channel_id` (pass a thread's parent channel)."""
    return settings.channel_mode == "all" or channel_id in settings.channels


def usable_providers(settings: GuildSettings, configured: Sequence[str]) -> tuple[str, ...]:
    """Configured providers this server allows, in the configured order."""
    if not settings.allowed_providers:
        return tuple(configured)
    return tuple(p for p in configured if p in settings.allowed_providers)


@dataclass(frozen=True)
class ChannelOverride:
    """Per-channel replacement of the server's safety level (None: no override)."""

    channel_id: int
    safety: int | None = None


def check_override_safety(value: object) -> int | None:
    """A channel override level, 0–6 (above `ORDINARY_SAFETY_MAX` it only loosens an age-restricted channel), or
    None to clear it."""
    return None if value is None else _whole(SAFETY_MIN, SAFETY_MAX)("safety", value)


@dataclass(frozen=True)
class AuditEntry:
    """One moderator change: who changed which key from what to what, and when (unix seconds)."""

    guild_id: int
    actor_id: int
    key: str
    old: str | None
    new: str | None
    at: float

    def describe(self) -> str:
        return f"{self.key}: {self.old or 'not set'} → {self.new or 'not set'}"


@dataclass(frozen=True)
class SafetyDecision:
    """The safety level that applies to one job and what it means for each provider.

    `internal[provider]` is the `internal=` mapping for `FillRequest.build`/`EditRequest.build`.
    """

    level: int
    channel_is_nsfw: bool
    source: str  # "server", "nsfw channel" or "channel override"
    flagged_outputs: str  # "withhold" or "spoiler" (spoiler only ever in NSFW channels)
    internal: Mapping[str, Mapping[str, Value]] = field(default_factory=dict)

    def for_provider(self, provider: str) -> dict[str, Value]:
        return dict(self.internal.get(provider, {}))


def effective_safety(
    settings: GuildSettings, override: ChannelOverride | None, *, channel_is_nsfw: bool
) -> SafetyDecision:
    """Map the server's level to each provider's own controls: the one safety policy for every provider.

    Outside age-restricted channels nothing is ever looser than `safety`: a channel override can only tighten
    there (so a channel that loses its NSFW flag cannot keep a loose override), and no level there goes above
    `ORDINARY_SAFETY_MAX`, whatever a stored row says. In NSFW channels the level is the override if set, else
    `nsfw_safety`. Each provider's registry entry then turns the level into its own controls.
    """
    level = settings.nsfw_safety if channel_is_nsfw else settings.safety
    source = "nsfw channel" if channel_is_nsfw else "server"
    if override is not None and override.safety is not None:
        level = override.safety if channel_is_nsfw else min(override.safety, settings.safety)
        source = "channel override"
    if not channel_is_nsfw:
        level = min(level, ORDINARY_SAFETY_MAX)
    internal = {name: entry.safety(level) for name, entry in PROVIDERS.items()}
    flagged = "spoiler" if channel_is_nsfw and settings.flagged_outputs == "spoiler" else "withhold"
    return SafetyDecision(level, channel_is_nsfw, source, flagged, internal)


TERM_ACTIONS = ("block", "strip")
MAX_TERM_CHARS = 100
MAX_TERMS_PER_GUILD = 500  # bounds the filter automata built per server (a check is linear in the prompt anyway)


@dataclass(frozen=True)
class BlockedTerm:
    """A moderator's prompt filter entry: `block` refuses the prompt, `strip` removes the term from it."""

    term: str
    action: str
    added_by: int
    added_at: float


def check_term(term: str, action: str) -> tuple[str, str]:
    """The term trimmed (inner white space collapsed) and the action, or a SettingsError saying what is wrong."""
    cleaned = " ".join(term.split())
    if action not in TERM_ACTIONS:
        raise SettingsError(f"The action {action!r} is not allowed: use one of {', '.join(TERM_ACTIONS)}.")
    if not cleaned:
        raise SettingsError("The term is empty: give the word or phrase to filter.")
    if len(cleaned) > MAX_TERM_CHARS:
        raise SettingsError(f"The term is {len(cleaned)} characters long; at most {MAX_TERM_CHARS} are allowed.")
    if not any(unicodedata.normalize("NFKC", ch).isalnum() for ch in cleaned):
        raise SettingsError(f"The term {cleaned!r} has no letters or digits, so it would match too much.")
    return cleaned, action


def term_key(term: str) -> str:
    """What makes two terms the same entry ("Bad" and "bad")."""
    return unicodedata.normalize("NFKC", " ".join(term.split())).casefold()
