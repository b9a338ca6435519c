"""Settings, loaded once from the environment (and `.env`) and checked before anything starts.

A wrong value fails fast with the variable's name and what is allowed. Secrets are wrapped in `Secret`, whose
`repr`/`str` never show the value, so settings can be logged safely.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from bot.errors import ConfigError
from bot.guild_settings import SettingsError, check_term, term_key
from bot.providers.registry import PROVIDER_NAMES, PROVIDERS

log = logging.getLogger(__name__)


class Secret:
    """A credential: compares and hashes by value, prints as `Secret('***')`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ProviderSettings:
    """Where one provider lives and how hard we may push it."""

    name: str
    base_url: str
    api_key: Secret | None
    max_concurrency: int


@dataclass(frozen=True)
class WebSettings:
    """The optional web side (provider webhooks, health, metrics): on only when PUBLIC_URL is set."""

    public_url: str  # how providers and people reach the server, no trailing slash
    host: str = "127.0.0.1"
    port: int = 8080
    fallback_poll: float = 30.0  # seconds between status checks of a job whose provider calls back


@dataclass(frozen=True)
class OperatorRules:
    """The operator's rules over every server and DM, which no server's moderators can loosen.

    Defaults are the values used while the variables are unset: DMs served with the key-free provider only (a
    DM has no moderators and no server quota to stop paid jobs), no bot-wide quota, queue caps so that one member
    or one server cannot fill every provider's queue, no bot-wide blocked terms.
    """

    dm_enabled: bool = True
    dm_providers: tuple[str, ...] = ("local",)
    member_daily_quota: int = 0  # jobs per member in any 24 hours, all servers and DMs together; 0 = unlimited
    max_queued_per_member: int = 10  # jobs waiting to start (preparing or queued); 0 = unlimited
    max_queued_per_server: int = 100
    blocked_terms: tuple[tuple[str, str], ...] = ()  # (term, action), applied before each server's own terms


@dataclass(frozen=True)
class Settings:
    discord_token: Secret | None
    providers: Mapping[str, ProviderSettings]
    default_provider: str
    database_path: Path
    max_attachment_bytes: int
    max_image_pixels: int
    poll_interval: float
    job_deadline: float
    history_days: int
    log_level: str
    dev_guild_id: int | None = None
    job_lease: float = 30.0  # seconds a dead process's jobs wait before another process takes them over
    web: WebSettings | None = None
    rules: OperatorRules = OperatorRules()
    allow_private_downloads: bool = False  # fetch results from loopback/private hosts (local set-ups, tests)
    external_workers: bool = False  # bot processes only admit jobs; `fillbot worker` processes run them
    worker_max_jobs: int = 50  # jobs one worker process runs at once (waiting at the provider included)
    database_url: Secret | None = None  # postgresql://…: PostgreSQL instead of the SQLite file (it holds a password)
    pixel_cache_bytes: int = 2048 * 1024 * 1024  # decoded uploads kept on disk until their finish (0: none)

    @property
    def database_target(self) -> str | Path:
        """What `Storage.open` takes: the PostgreSQL URL when one is set, else the SQLite file."""
        return self.database_url.reveal() if self.database_url is not None else self.database_path

    @property
    def available_providers(self) -> tuple[str, ...]:
        """Providers with credentials, plus those that need none, in the registry's order."""
        return _available(self.providers)

    def require_discord_token(self) -> Secret:
        if self.discord_token is None:
            raise ConfigError(
                "DISCORD_TOKEN is not set: copy .env.example to .env and paste your bot token "
                "(Discord Developer Portal → your application → Bot → Reset Token)."
            )
        return self.discord_token


def _available(providers: Mapping[str, ProviderSettings]) -> tuple[str, ...]:
    return tuple(
        name
        for name, entry in PROVIDERS.items()
        if entry.env.key is None or (name in providers and providers[name].api_key is not None)
    )


MAX_OPERATOR_TERMS = 100_000  # BLOCKED_TERMS_FILE: the filter's automaton is built once, at start-up


class _Reader:
    """Reads typed values from one mapping and names the variable in every error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.env.get(name, "").strip()
        return value or default

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number (allowed: {minimum}–{maximum}).") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name}={value} is out of range (allowed: {minimum}–{maximum}).")
        return value

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number (allowed: {minimum}–{maximum}).") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name}={value} is out of range (allowed: {minimum}–{maximum}).")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} is not true or false (allowed: true, false, 1, 0, yes, no, on, off).")

    def secret(self, name: str) -> Secret | None:
        raw = self.text(name)
        if raw is None:
            return None
        if any(ch.isspace() for ch in raw):
            raise ConfigError(f"{name} contains white space; paste the key alone, without quotes or spaces.")
        return Secret(raw)

    def url(self, name: str, default: str) -> str:
        raw = self.text(name, default)
        assert raw is not None
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{name}={raw!r} is not an http(s) URL (example: {default}).")
        if parts.query or parts.fragment:
            raise ConfigError(f"{name}={raw!r} must not have a query or fragment (example: {default}).")
        return raw.rstrip("/")

    def providers(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() == "none":
            return ()
        names = [n.lower() for n in raw.replace(",", " ").split()]
        unknown = [n for n in names if n not in PROVIDER_NAMES]
        if unknown:
            raise ConfigError(f"{name}={raw!r} names unknown providers: {', '.join(unknown)} "
                              f"(allowed: {', '.join(PROVIDER_NAMES)}, or none).")
        return tuple(n for n in PROVIDER_NAMES if n in names)

    def terms_file(self, name: str) -> tuple[tuple[str, str], ...]:
        """(term, action) from a file with one term per line: `strip:` before a term strips it instead of
        refusing the prompt; blank lines and lines starting with `#` are skipped."""
        raw = self.text(name)
        if raw is None:
            return ()
        try:
            lines = Path(raw).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{name}={raw!r} cannot be read as a UTF-8 text file: {exc}.") from None
        terms: dict[str, tuple[str, str]] = {}
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            action = "strip" if text.lower().startswith("strip:") else "block"
            try:
                term, action = check_term(text[len("strip:"):] if action == "strip" else text, action)
            except SettingsError as exc:
                raise ConfigError(f"{name}={raw!r}, line {number}: {exc.message}") from None
            terms.setdefault(term_key(term), (term, action))
            if len(terms) > MAX_OPERATOR_TERMS:
                raise ConfigError(f"{name}={raw!r} holds more than {MAX_OPERATOR_TERMS} terms (line {number}); "
                                  "the filter is built from all of them at start-up: shorten the list.")
        return tuple(terms.values())


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback address: the only hosts plain http (and test set-ups) are trusted on."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _web_settings(read: _Reader) -> WebSettings | None:
    """PUBLIC_URL turns the web side on; it must be https, except on this machine (tests, local tunnels)."""
    raw = read.text("PUBLIC_URL")
    if raw is None:
        return None
    parts = urlsplit(raw)
    example = "https://fillbot.example.org"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"PUBLIC_URL={raw!r} is not an http(s) URL (example: {example}).")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"PUBLIC_URL={raw!r} must use https: providers and browsers reach it over the internet "
            "(plain http is allowed only for localhost/127.0.0.1)."
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"PUBLIC_URL={raw!r} must not have a query, fragment or credentials (example: {example}).")
    host = read.text("WEB_HOST", "127.0.0.1")
    assert host is not None
    return WebSettings(
        public_url=raw.rstrip("/"),
        host=host,
        port=read.integer("WEB_PORT", 8080, minimum=1, maximum=65535),
        fallback_poll=read.number("WEBHOOK_FALLBACK_POLL", 30.0, minimum=1.0, maximum=600.0),
    )


def load_settings(env: Mapping[str, str] | None = None, *, env_file: str | os.PathLike[str] = ".env") -> Settings:
    """Read settings from `env` (default: `.env` overlaid by the process environment)."""
    if env is None:
        file_values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
        env = {**file_values, **os.environ}
    read = _Reader(env)

    providers: dict[str, ProviderSettings] = {}
    for name, entry in PROVIDERS.items():
        names = entry.env
        key = read.secret(names.key) if names.key else None
        url = read.url(names.base_url, names.default_base_url) if names.base_url else names.default_base_url
        limit = read.integer(names.concurrency, names.default_concurrency, minimum=1, maximum=1000)
        providers[name] = ProviderSettings(name=name, base_url=url, api_key=key, max_concurrency=limit)

    available = _available(providers)
    default_provider = read.text("DEFAULT_PROVIDER", available[0])
    assert default_provider is not None
    default_provider = default_provider.lower()
    if default_provider not in PROVIDER_NAMES:
        raise ConfigError(
            f"DEFAULT_PROVIDER={default_provider!r} is unknown (allowed: {', '.join(PROVIDER_NAMES)})."
        )
    if default_provider not in available:
        raise ConfigError(
            f"DEFAULT_PROVIDER={default_provider!r} has no key: set {PROVIDERS[default_provider].env.key} "
            f"or choose one of {', '.join(available)}."
        )

    log_level = (read.text("LOG_LEVEL", "INFO") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"LOG_LEVEL={log_level!r} is unknown (allowed: DEBUG, INFO, WARNING, ERROR).")

    guild = read.text("DISCORD_DEV_GUILD_ID")
    if guild is not None and not guild.isdigit():
        raise ConfigError(f"DISCORD_DEV_GUILD_ID={guild!r} must be a server id (digits only).")

    return Settings(
        discord_token=read.secret("DISCORD_TOKEN"),
        providers=providers,
        default_provider=default_provider,
        database_path=Path(read.text("DATABASE_PATH", "fillbot.db") or "fillbot.db"),
        max_attachment_bytes=read.integer(
            "MAX_ATTACHMENT_BYTES", 20 * 1024 * 1024, minimum=64 * 1024, maximum=500 * 1024 * 1024
        ),
        max_image_pixels=read.integer(
            "MAX_IMAGE_PIXELS", 40_000_000, minimum=65_536, maximum=200_000_000
        ),
        poll_interval=read.number("POLL_INTERVAL", 1.0, minimum=0.0, maximum=60.0),
        job_deadline=read.number("JOB_DEADLINE", 600.0, minimum=5.0, maximum=3600.0),
        history_days=read.integer("HISTORY_DAYS", 30, minimum=1, maximum=3650),
        log_level=log_level,
        dev_guild_id=int(guild) if guild else None,
        job_lease=read.number("JOB_LEASE_SECONDS", 30.0, minimum=0.2, maximum=600.0),
        allow_private_downloads=read.flag("ALLOW_PRIVATE_DOWNLOADS", False),
        external_workers=read.flag("EXTERNAL_WORKERS", False),
        worker_max_jobs=read.integer("WORKER_MAX_JOBS", 50, minimum=1, maximum=10_000),
        pixel_cache_bytes=read.integer("PIXEL_CACHE_MB", 2048, minimum=0, maximum=1_000_000) * 1024 * 1024,
        database_url=_database_url(read),
        web=_web_settings(read),
        rules=_operator_rules(read),
    )


def _database_url(read: _Reader) -> Secret | None:
    url = read.secret("DATABASE_URL")
    if url is not None and urlsplit(url.reveal()).scheme not in ("postgresql", "postgres"):
        # The value is not repeated: it may hold a password.
        raise ConfigError("DATABASE_URL must be a postgresql:// URL (example: postgresql://fillbot:pw@db/fillbot); "
                          "leave it unset to use the SQLite file DATABASE_PATH.")
    return url


def _operator_rules(read: _Reader) -> OperatorRules:
    default = OperatorRules()
    return OperatorRules(
        dm_enabled=read.flag("DM_ENABLED", default.dm_enabled),
        dm_providers=read.providers("DM_PROVIDERS", default.dm_providers),
        member_daily_quota=read.integer("MEMBER_DAILY_QUOTA", default.member_daily_quota, minimum=0,
                                        maximum=1_000_000),
        max_queued_per_member=read.integer("MAX_QUEUED_PER_MEMBER", default.max_queued_per_member, minimum=0,
                                           maximum=100_000),
        max_queued_per_server=read.integer("MAX_QUEUED_PER_SERVER", default.max_queued_per_server, minimum=0,
                                           maximum=1_000_000),
        blocked_terms=read.terms_file("BLOCKED_TERMS_FILE"),
    )
