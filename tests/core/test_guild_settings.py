"""Guild settings: validation, the safety mapping per provider, and their storage (cache, audit, restart)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.guild_settings import (
    SETTING_DESCRIPTIONS,
    ChannelOverride,
    GuildSettings,
    SettingsError,
    apply_changes,
    channel_allowed,
    effective_safety,
    format_value,
    parse_setting,
    settings_from_stored,
    usable_providers,
)
from bot.params import EditRequest, FillRequest
from bot.providers.registry import PROVIDER_NAMES
from bot.storage import Storage

GUILD = 10
MOD = 77


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(clock: Clock) -> AsyncIterator[Storage]:
    async with await Storage.open(":memory:", clock=clock) as storage:
        yield storage


def test_every_setting_has_a_description() -> None:
    assert set(SETTING_DESCRIPTIONS) == {f.name for f in dataclasses.fields(GuildSettings)}
    assert all(text.strip() for text in SETTING_DESCRIPTIONS.values())


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"safety": 7}, "`safety` = 7"),
        ({"safety": -1}, "from 0 to 4"),
        ({"safety": 5, "nsfw_safety": 6}, "from 0 to 4"),  # the loosest levels are for age-restricted channels
        ({"nsfw_safety": 7}, "from 0 to 6"),
        ({"safety": True}, "`safety`"),
        ({"safety": "2"}, "`safety`"),
        ({"nsfw_safety": 1}, "cannot be below"),
        ({"max_outputs": 5}, "from 1 to 4"),
        ({"max_concurrent_per_user": 0}, "from 1 to"),
        ({"flagged_outputs": "show"}, "withhold, spoiler"),
        ({"allowed_providers": ("bfl", "midjourney")}, "midjourney"),
        ({"allowed_providers": "bfl"}, "a list of providers"),
        ({"allowed_providers": ("bfl",), "default_provider": "replicate"}, "must be one of"),
        ({"channel_mode": "list"}, "at least one channel"),
        ({"channels": (0,)}, "`channels`"),
        ({"colour": "red"}, "no setting called `colour`"),
    ],
)
def test_invalid_changes_name_the_problem(changes: dict[str, object], words: str) -> None:
    with pytest.raises(SettingsError) as caught:
        apply_changes(GuildSettings(), changes)
    assert words in caught.value.message


def test_valid_changes_are_canonical() -> None:
    updated = apply_changes(
        GuildSettings(),
        {"safety": 4, "nsfw_safety": 6, "allowed_providers": ["local", "bfl", "bfl"], "default_provider": "bfl",
         "channel_mode": "list", "channels": [123, 123, 456]},
    )
    assert (updated.safety, updated.nsfw_safety) == (4, 6)
    assert updated.allowed_providers == ("bfl", "local")  # provider order, no duplicates
    assert updated.channels == (123, 456)
    assert channel_allowed(updated, 456) and not channel_allowed(updated, 789)
    assert channel_allowed(GuildSettings(), 789)
    assert usable_providers(updated, ("replicate", "bfl", "local")) == ("bfl", "local")
    assert usable_providers(GuildSettings(), ("replicate", "bfl")) == ("replicate", "bfl")


def test_parse_setting_reads_what_moderators_type() -> None:
    assert parse_setting("safety", " 3 ") == 3
    assert parse_setting("allowed_providers", "BFL, replicate") == ("bfl", "replicate")
    assert parse_setting("allowed_providers", "none") == ()
    assert parse_setting("channels", "<#123456789012345678> 223456789012345678") == (
        123456789012345678, 223456789012345678,
    )
    assert parse_setting("gallery_channel_id", "<#123456789012345678>") == 123456789012345678
    assert parse_setting("log_channel_id", "none") is None
    assert parse_setting("default_provider", "off") is None
    assert parse_setting("flagged_outputs", "Spoiler") == "spoiler"
    with pytest.raises(SettingsError, match="whole number"):
        parse_setting("cooldown_seconds", "ten")
    with pytest.raises(SettingsError, match="not a channel"):
        parse_setting("channels", "general")


def test_stale_stored_values_fall_back_to_defaults() -> None:
    settings = settings_from_stored({"safety": 9, "max_outputs": 3, "gone": 1, "allowed_providers": ["bfl"]})
    assert settings == GuildSettings(max_outputs=3, allowed_providers=("bfl",))


# -- safety mapping -----------------------------------------------------------------------------------------


def test_safety_in_a_normal_channel_is_the_server_level() -> None:
    decision = effective_safety(GuildSettings(safety=1, nsfw_safety=5), None, channel_is_nsfw=False)
    assert (decision.level, decision.source) == (1, "server")
    assert decision.for_provider("bfl") == {"safety_tolerance": 1}
    assert decision.for_provider("replicate") == {"disable_safety_checker": False}
    assert decision.for_provider("wavespeed") == {} and decision.for_provider("local") == {}
    assert set(decision.internal) == set(PROVIDER_NAMES)


def test_nsfw_channel_uses_the_looser_level() -> None:
    decision = effective_safety(GuildSettings(safety=1, nsfw_safety=5), None, channel_is_nsfw=True)
    assert (decision.level, decision.source) == (5, "nsfw channel")
    assert decision.for_provider("bfl") == {"safety_tolerance": 5}
    assert decision.for_provider("replicate") == {"disable_safety_checker": False}  # only at 6


# One policy for every provider: (level asked, age-restricted channel) -> each provider's controls. A row stored
# before `safety` was capped (here built directly) still gets no more than ORDINARY_SAFETY_MAX outside NSFW channels.
@pytest.mark.parametrize(
    ("asked", "nsfw", "level", "bfl", "replicate_off"),
    [
        (0, False, 0, 0, False),
        (4, False, 4, 4, False),
        (5, False, 4, 4, False),
        (6, False, 4, 4, False),
        (0, True, 0, 0, False),
        (4, True, 4, 4, False),
        (5, True, 5, 5, False),
        (6, True, 6, 6, True),
    ],
)
def test_most_permissive_levels_only_in_age_restricted_channels_for_every_provider(
    asked: int, nsfw: bool, level: int, bfl: int, replicate_off: bool
) -> None:
    for settings, override in ((GuildSettings(safety=asked, nsfw_safety=asked), None),
                               (GuildSettings(safety=6, nsfw_safety=6), ChannelOverride(1, asked))):
        decision = effective_safety(settings, override, channel_is_nsfw=nsfw)
        assert decision.level == level
        assert decision.for_provider("bfl") == {"safety_tolerance": bfl}
        assert decision.for_provider("replicate") == {"disable_safety_checker": replicate_off}
        assert decision.for_provider("wavespeed") == {} and decision.for_provider("local") == {}


def test_channel_override_tightens_anywhere_but_loosens_only_in_nsfw_channels() -> None:
    settings = GuildSettings(safety=3, nsfw_safety=4)
    assert effective_safety(settings, ChannelOverride(1, 0), channel_is_nsfw=False).level == 0
    assert effective_safety(settings, ChannelOverride(1, 6), channel_is_nsfw=False).level == 3
    loose = effective_safety(settings, ChannelOverride(1, 6), channel_is_nsfw=True)
    assert (loose.level, loose.source) == (6, "channel override")
    assert loose.for_provider("replicate") == {"disable_safety_checker": True}
    assert effective_safety(settings, ChannelOverride(1, 1), channel_is_nsfw=True).level == 1
    assert effective_safety(settings, ChannelOverride(1, None), channel_is_nsfw=True).level == 4


def test_flagged_outputs_spoilered_only_in_nsfw_channels() -> None:
    settings = GuildSettings(flagged_outputs="spoiler")
    assert effective_safety(settings, None, channel_is_nsfw=True).flagged_outputs == "spoiler"
    assert effective_safety(settings, None, channel_is_nsfw=False).flagged_outputs == "withhold"
    assert effective_safety(GuildSettings(), None, channel_is_nsfw=True).flagged_outputs == "withhold"


def test_internal_options_are_accepted_by_request_building() -> None:
    decision = effective_safety(GuildSettings(safety=6, nsfw_safety=6), None, channel_is_nsfw=True)
    bfl = FillRequest.build("bfl", "a cat", {}, internal=decision.for_provider("bfl"))
    assert bfl.params["safety_tolerance"] == 6
    replicate = EditRequest.build("replicate", "make it night", {}, internal=decision.for_provider("replicate"))
    assert replicate.params["disable_safety_checker"] is True
    wavespeed = FillRequest.build("wavespeed", "a cat", {}, internal=decision.for_provider("wavespeed"))
    assert "safety_tolerance" not in wavespeed.params


# -- storage ------------------------------------------------------------------------------------------------


async def test_settings_update_writes_audit_rows(store: Storage, clock: Clock) -> None:
    assert await store.guild_settings(GUILD) == GuildSettings()
    entries = await store.update_guild_settings(
        GUILD, MOD, {"safety": 3, "nsfw_safety": 4, "gallery_channel_id": 555, "max_outputs": 2}
    )
    assert [e.describe() for e in entries] == [
        "safety: 2 → 3", "max_outputs: 4 → 2", "gallery_channel_id: not set → 555",
    ]  # nsfw_safety was already 4: no row
    assert all(e.actor_id == MOD and e.at == clock.now and e.guild_id == GUILD for e in entries)
    clock.now += 60
    await store.update_guild_settings(GUILD, MOD + 1, {"allowed_providers": ("bfl", "local")})
    log = await store.audit_log(GUILD)
    assert [(e.key, e.old, e.new, e.actor_id) for e in log[:2]] == [
        ("allowed_providers", "all configured providers", "bfl, local", MOD + 1),
        ("gallery_channel_id", "not set", "555", MOD),
    ]
    assert len(await store.audit_log(GUILD, limit=2)) == 2
    assert await store.audit_log(GUILD + 1) == []


async def test_rejected_update_saves_nothing(store: Storage) -> None:
    with pytest.raises(SettingsError):
        await store.update_guild_settings(GUILD, MOD, {"max_outputs": 2, "safety": 9})
    assert await store.guild_settings(GUILD) == GuildSettings()
    assert await store.audit_log(GUILD) == []


async def test_settings_cache_invalidated_on_write_and_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    async with await Storage.open(path) as storage:
        assert (await storage.guild_settings(GUILD)).cooldown_seconds == 0
        # A change behind the cache's back is not seen: reads come from the cache ...
        with sqlite3.connect(path) as raw:
            raw.execute("INSERT INTO guild_settings VALUES (?, 'max_outputs', ?)", (GUILD, json.dumps(1)))
        assert (await storage.guild_settings(GUILD)).max_outputs == 4
        # ... until a write through Storage invalidates it.
        await storage.update_guild_settings(GUILD, MOD, {"cooldown_seconds": 30, "channels": [42]})
        settings = await storage.guild_settings(GUILD)
        assert (settings.cooldown_seconds, settings.max_outputs, settings.channels) == (30, 1, (42,))
    async with await Storage.open(path) as storage:
        restarted = await storage.guild_settings(GUILD)
        assert (restarted.cooldown_seconds, restarted.max_outputs, restarted.channels) == (30, 1, (42,))
        assert await storage.guild_settings(GUILD + 1) == GuildSettings()


async def test_channel_overrides_are_audited(store: Storage) -> None:
    entry = await store.set_channel_override(GUILD, MOD, 123, safety=1)
    assert entry is not None and entry.describe() == "channel 123 safety: not set → 1"
    assert await store.set_channel_override(GUILD, MOD, 123, safety=1) is None  # no change, no row
    assert await store.channel_override(GUILD, 123) == ChannelOverride(123, 1)
    changed = await store.set_channel_override(GUILD, MOD, 123, safety=5)
    assert changed is not None and (changed.old, changed.new) == ("1", "5")
    assert await store.channel_overrides(GUILD) == {123: ChannelOverride(123, 5)}
    with pytest.raises(SettingsError):
        await store.set_channel_override(GUILD, MOD, 123, safety=7)
    cleared = await store.clear_channel_override(GUILD, MOD, 123)
    assert cleared is not None and (cleared.old, cleared.new) == ("5", None)
    assert await store.channel_overrides(GUILD) == {}
    assert await store.clear_channel_override(GUILD, MOD, 123) is None
    assert len(await store.audit_log(GUILD)) == 3


async def test_blocked_terms_are_cached_and_audited(store: Storage) -> None:
    added = await store.add_blocked_term(GUILD, MOD, "  Bad   Word ", "block")
    assert added is not None and added.describe() == "blocked term: not set → Bad Word (block)"
    assert await store.add_blocked_term(GUILD, MOD, "bad word", "block") is None  # same term, any case
    changed = await store.add_blocked_term(GUILD, MOD, "bad word", "strip")
    assert changed is not None and (changed.old, changed.new) == ("Bad Word (block)", "bad word (strip)")
    await store.add_blocked_term(GUILD, MOD, "c++")
    assert [(t.term, t.action, t.added_by) for t in await store.blocked_terms(GUILD)] == [
        ("bad word", "strip", MOD), ("c++", "block", MOD),
    ]
    removed = await store.remove_blocked_term(GUILD, MOD + 1, "C++")
    assert removed is not None and (removed.old, removed.new, removed.actor_id) == ("c++ (block)", None, MOD + 1)
    assert await store.remove_blocked_term(GUILD, MOD, "c++") is None
    assert [t.term for t in await store.blocked_terms(GUILD)] == ["bad word"]
    assert await store.blocked_terms(GUILD + 1) == ()
    for bad_term, action in (("", "block"), ("!!!", "block"), ("x" * 101, "block"), ("ok", "mute")):
        with pytest.raises(SettingsError):
            await store.add_blocked_term(GUILD, MOD, bad_term, action)
    assert len(await store.audit_log(GUILD)) == 4


def test_format_value_reads_an_empty_list_as_what_it_means_for_the_setting() -> None:
    assert format_value((), "allowed_providers") == "all configured providers"
    assert format_value((), "channels") == "none"
    assert format_value(("bfl", "local"), "allowed_providers") == "bfl, local"
