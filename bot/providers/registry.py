"""One entry per provider: its models, picture sizing, safety controls, settings and client.

Settings, the pipeline, per-server safety, the service and the slash options read this table, so each fact about
a provider is written once: a new provider brings its spec tables (bot/params.py), its sizing rules if none fits
(bot/imaging/sizing.py), its client module and one entry here. `bot.config` reads the table at import, so it stays
as cheap as plain data: sizing rules are named rather than imported (imaging loads NumPy and OpenCV), and client
modules, which import `bot.config` themselves, are imported only when a client is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.params import SPECS, Field, ModelSpec, Operation, Value

if TYPE_CHECKING:
    import httpx

    from bot.config import ProviderSettings
    from bot.imaging.sizing import SizingRule
    from bot.providers.base import Provider
    from bot.providers.http import Downloader

    Transport = httpx.AsyncBaseTransport
    ClientFactory = Callable[[ProviderSettings, Downloader, Transport | None], Provider]

# A server's content safety level, 0 strictest … 6 most permissive: BFL's `safety_tolerance` scale, which the
# other providers' controls are mapped from.
SAFETY_MIN = 0
SAFETY_MAX = 6
# One policy for every provider: levels above this one (BFL's most permissive tolerances, Replicate without its
# checker) apply only in age-restricted channels; `bot.guild_settings.effective_safety` caps the level elsewhere.
ORDINARY_SAFETY_MAX = 4

# The job's level (already capped for the channel) -> the bot-set `internal=` fields for the provider's models.
SafetyMapping = Callable[[int], Mapping[str, Value]]


@dataclass(frozen=True)
class Environment:
    """The variables that configure one provider, and what applies while they are unset."""

    concurrency: str
    default_concurrency: int
    default_base_url: str
    key: str | None = None  # None: the provider needs no key, so it is always offered
    base_url: str | None = None  # None: the address is fixed


@dataclass(frozen=True)
class ProviderEntry:
    """Everything the bot knows about one provider apart from its spec tables, which `specs` finds by name."""

    name: str
    label: str  # how option help names it: "Replicate 4 to 50"
    env: Environment
    sizing: Mapping[Operation, str]  # per operation, the name of its rule in bot.imaging.sizing
    safety: SafetyMapping
    client: ClientFactory

    @property
    def specs(self) -> tuple[ModelSpec, ...]:
        return tuple(spec for spec in SPECS if spec.provider == self.name)

    def sizing_rule(self, operation: Operation) -> SizingRule:
        """The picture size rule for `operation`, imported on first use."""
        from bot.imaging import sizing

        rule: SizingRule = getattr(sizing, self.sizing[operation])
        return rule


def _bfl_safety(level: int) -> dict[str, Value]:
    return {"safety_tolerance": level}


def _replicate_safety(level: int) -> dict[str, Value]:
    """The checker is on or off: off only at the most permissive level (reached in age-restricted channels only)."""
    return {"disable_safety_checker": level == SAFETY_MAX}


def _no_safety_controls(level: int) -> dict[str, Value]:
    return {}


def _replicate_client(settings: ProviderSettings, downloader: Downloader, transport: Transport | None) -> Provider:
    from bot.providers.replicate import ReplicateProvider

    return ReplicateProvider(settings, downloader, transport=transport)


def _bfl_client(settings: ProviderSettings, downloader: Downloader, transport: Transport | None) -> Provider:
    from bot.providers.bfl import BFLProvider

    return BFLProvider(settings, downloader, transport=transport)


def _wavespeed_client(settings: ProviderSettings, downloader: Downloader, transport: Transport | None) -> Provider:
    from bot.providers.wavespeed import WaveSpeedProvider

    return WaveSpeedProvider(settings, downloader, transport=transport)


def _local_client(settings: ProviderSettings, downloader: Downloader, transport: Transport | None) -> Provider:
    from bot.providers.local import LocalProvider

    return LocalProvider()  # works on this machine: no address, key or downloads


# Order matters: the first provider with a key is the default one (local, needing none, comes last).
PROVIDERS: Mapping[str, ProviderEntry] = {
    entry.name: entry
    for entry in (
        ProviderEntry(
            name="replicate",
            label="Replicate",
            env=Environment(
                key="REPLICATE_API_TOKEN",
                base_url="REPLICATE_BASE_URL",
                default_base_url="https://api.replicate.com/v1",
                concurrency="REPLICATE_MAX_CONCURRENCY",
                default_concurrency=8,
            ),
            sizing={"fill": "REPLICATE_FILL", "edit": "KONTEXT"},
            safety=_replicate_safety,
            client=_replicate_client,
        ),
        ProviderEntry(
            name="bfl",
            label="BFL",
            env=Environment(
                key="BFL_API_KEY",
                base_url="BFL_BASE_URL",
                default_base_url="https://api.bfl.ai/v1",
                concurrency="BFL_MAX_CONCURRENCY",
                default_concurrency=24,  # active tasks per account (docs/providers.md §3)
            ),
            sizing={"fill": "BFL_FILL", "edit": "KONTEXT"},
            safety=_bfl_safety,
            client=_bfl_client,
        ),
        ProviderEntry(
            name="wavespeed",
            label="WaveSpeed",
            env=Environment(
                key="WAVESPEED_API_KEY",
                base_url="WAVESPEED_BASE_URL",
                default_base_url="https://api.wavespeed.ai/api/v3",
                concurrency="WAVESPEED_MAX_CONCURRENCY",
                default_concurrency=2,  # the entry tier's limit (docs/providers.md §4)
            ),
            sizing={"fill": "WAVESPEED_FILL"},
            safety=_no_safety_controls,
            client=_wavespeed_client,
        ),
        ProviderEntry(
            name="local",
            label="local",
            env=Environment(concurrency="LOCAL_MAX_CONCURRENCY", default_concurrency=1, default_base_url="local:"),
            sizing={"fill": "LOCAL"},
            safety=_no_safety_controls,
            client=_local_client,
        ),
    )
}
PROVIDER_NAMES: tuple[str, ...] = tuple(PROVIDERS)


@dataclass(frozen=True)
class Span:
    """The widest range a front end may offer for one option; the chosen model still checks its own."""

    minimum: float
    maximum: float


def _offered(operation: Operation) -> list[tuple[ProviderEntry, Field]]:
    return [
        (entry, field)
        for entry in PROVIDERS.values()
        for spec in entry.specs
        if spec.operation == operation
        for field in spec.user_fields
    ]


def option_span(operation: Operation, name: str) -> Span:
    """The range of option `name` that covers every provider able to run `operation`.

    Whole-number options keep whole-number ends: discord.py wants both ends of a range in the option's type.
    """
    fields = [f for _, f in _offered(operation) if f.name == name]
    ends = [(f.minimum, f.maximum) for f in fields if f.minimum is not None and f.maximum is not None]
    if not ends:
        raise ValueError(f"No /{operation} model has a ranged option {name!r}.")
    number = int if fields[0].kind is int else float
    return Span(number(min(low for low, _ in ends)), number(max(high for _, high in ends)))


def option_note(operation: Operation, name: str) -> str:
    """Which providers take option `name` for `operation`, with their ranges: `Replicate 1 to 50, BFL 15 to 50`."""
    return ", ".join(
        f"{entry.label} {field.range_text()}".rstrip() for entry, field in _offered(operation) if field.name == name
    )
