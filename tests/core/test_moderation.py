"""Prompt term filter (evasions caught, innocent words spared) and usage limits (including under a burst)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from bot.guild_settings import GuildSettings
from bot.lifecycle.states import State
from bot.moderation import (
    FilterResult,
    LimitDecision,
    LimitGate,
    TermFilter,
    admit,
    check_limits,
    compile_filter,
    guild_filter,
    normalise,
)
from bot.storage import JobRecord, Storage

DAY = 86_400.0
T0 = 1_700_000_000.0
GUILD = 10


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(clock: Clock) -> AsyncIterator[Storage]:
    async with await Storage.open(":memory:", clock=clock) as storage:
        yield storage


# -- term filter --------------------------------------------------------------------------------------------

ASS = TermFilter([("ass", "block")])


def test_normalise_keeps_a_map_to_the_original() -> None:
    norm = normalise("Ｂ\u200bа\u0301ᴅ ﬁ")
    assert norm.text.startswith("b") and "\u200b" not in norm.text
    assert norm.text.endswith("fi")
    assert norm.origin[-2:] == (len(norm.source) - 1, len(norm.source) - 1)  # both letters of "ﬁ"


@pytest.mark.parametrize("prompt", ["a class photo", "my assistant", "a narrow passage", "bass guitar", "sassy",
                                    "glass 4 sale", "as soon as", "a s"])
def test_whole_words_only(prompt: str) -> None:
    assert ASS.check(prompt).blocked_term is None


@pytest.mark.parametrize("prompt", [
    "ass", "an ASS", "ＡＳＳ", "аss", "ａｓｓ", "\u0430\u0455\u0455", "4ss", "@$$", "a.s.s", "a s s", "a_s_s",
    "a-s-s", "x a . s . s y", "a\u200bss", "as\u200d\u2060s", "a\u0301ss", "big ass!", "(ass)",
])
def test_evasions_are_caught(prompt: str) -> None:
    assert ASS.check(prompt).blocked_term == "ass"


def test_block_reports_the_term_as_written_and_keeps_the_prompt() -> None:
    result = TermFilter([("Bad Thing", "block"), ("meh", "strip")]).check("a meh b4d   thing here")
    assert result.blocked and result.blocked_term == "Bad Thing"
    assert result.stripped_prompt == "a meh b4d   thing here" and result.stripped_terms == ()


def test_strip_removes_terms_from_the_original_text() -> None:
    terms = TermFilter([("ugly", "strip"), ("blurry", "strip")])
    result = terms.check("A  ÚGLY, b.l.u.r.r.y  portrait of a cat,\nugly")
    assert result.blocked_term is None
    assert result.stripped_prompt == "A , portrait of a cat,"
    assert result.stripped_terms == ("ugly", "blurry")
    # Look-alike letters and zero-width characters inside the term are removed with it, nothing else.
    assert terms.check("a u\u200bgly dυckling").stripped_prompt == "a dυckling"
    assert terms.check("an \u03c5gly\u0301 duckling").stripped_prompt == "an duckling"  # Greek υ + accent
    untouched = "nothing to strip here: smuggly, ugl y"
    assert terms.check(untouched) == FilterResult(None, untouched, ())


def test_multiple_terms_and_longest_wins() -> None:
    terms = TermFilter([("bad", "strip"), ("bad word", "block"), ("other", "block")])
    assert terms.check("a bad day").stripped_prompt == "a day"
    assert terms.check("a bad word").blocked_term == "bad word"
    assert terms.check("the OTHER one").blocked_term == "other"
    assert len(terms) == 3


def test_stripping_cannot_assemble_a_blocked_word() -> None:
    terms = TermFilter([("foo", "strip"), ("ass", "block")])
    assert terms.check("a s foo s").blocked_term == "ass"


def test_regex_metacharacters_are_escaped() -> None:
    terms = TermFilter([("c++", "strip"), ("x(.*)", "block"), ("a|b", "block")])
    assert terms.check("I write C++ daily").stripped_prompt == "I write daily"
    assert terms.check("cpp and c").blocked_term is None
    assert terms.check("xyz and a or b").blocked_term is None
    assert terms.check("literally x(.*) here").blocked_term == "x(.*)"
    assert terms.check("a|b").blocked_term == "a|b"


def test_empty_filter_and_cache() -> None:
    assert TermFilter([]).check("anything").stripped_prompt == "anything"
    first = compile_filter((("ass", "block"),))
    assert compile_filter((("ass", "block"),)) is first
    assert compile_filter((("ass", "strip"),)) is not first


def test_large_filter_is_fast() -> None:
    terms = TermFilter([(f"word{n}x", "block") for n in range(500)] + [("ass", "strip")])
    prompt = "a very long prompt with many words and a class or two " * 36  # ~2000 characters
    started = time.perf_counter()
    assert terms.check(prompt).blocked_term is None
    assert time.perf_counter() - started < 0.5


async def test_guild_filter_follows_storage(store: Storage) -> None:
    assert (await guild_filter(store, GUILD)).check("ass").blocked_term is None
    await store.add_blocked_term(GUILD, 1, "ass")
    assert (await guild_filter(store, GUILD)).check("a.s.s").blocked_term == "ass"
    await store.remove_blocked_term(GUILD, 1, "ass")
    assert (await guild_filter(store, GUILD)).check("ass").blocked_term is None


# -- limits -------------------------------------------------------------------------------------------------


def limits(settings: GuildSettings, *, recent: tuple[float, ...] = (), active: int = 0,
           user_today: tuple[float, ...] = (), guild_today: tuple[float, ...] = (), now: float = T0) -> LimitDecision:
    return check_limits(settings, user_recent_job_times=recent, user_active=active, user_today=user_today,
                        guild_today=guild_today, now=now)


def test_no_limits_allow() -> None:
    decision = limits(GuildSettings(), recent=(T0 - 1,), user_today=(T0,) * 50, guild_today=(T0,) * 500)
    assert decision.allowed and decision.retry_at is None


def test_cooldown() -> None:
    settings = GuildSettings(cooldown_seconds=30)
    decision = limits(settings, recent=(T0 - 100, T0 - 10.5))
    assert not decision.allowed
    assert decision.retry_at == T0 + 20  # 19.5 s rounded up to whole seconds: never too early
    assert "30 s cooldown" in decision.message and f"<t:{int(T0) + 20}:R>" in decision.message
    assert limits(settings, recent=(T0 - 30,)).allowed


def test_concurrency() -> None:
    decision = limits(GuildSettings(max_concurrent_per_user=2), active=2)
    assert not decision.allowed and decision.retry_at is None
    assert "2 jobs running" in decision.message and "allows 2" in decision.message
    assert limits(GuildSettings(max_concurrent_per_user=2), active=1).allowed


def test_daily_quotas_say_when_a_slot_frees() -> None:
    settings = GuildSettings(daily_quota_per_user=2, daily_quota_per_guild=3)
    times = (T0 - DAY - 5, T0 - 5000, T0 - 3000, T0 - 1000)  # the first is outside the rolling window
    user = limits(settings, user_today=times)
    assert not user.allowed
    assert user.retry_at == T0 - 3000 + DAY  # 3 in the window, quota 2: the 2nd oldest must age out
    assert "your 2 jobs" in user.message and "24 hours" in user.message
    guild = limits(settings, user_today=times[:2], guild_today=times)
    assert not guild.allowed and guild.retry_at == T0 - 5000 + DAY
    assert "This server has used its 3 jobs" in guild.message
    assert limits(settings, user_today=times[:2], guild_today=times[:3]).allowed


def test_the_longest_limit_is_reported() -> None:
    settings = GuildSettings(cooldown_seconds=60, daily_quota_per_user=1, max_concurrent_per_user=1)
    decision = limits(settings, recent=(T0 - 1,), active=1, user_today=(T0 - 1,))
    assert decision.retry_at == T0 - 1 + DAY and "24 hours" in decision.message


def job(job_id: str, *, user_id: int, guild_id: int | None = GUILD, status: str = "queued") -> JobRecord:
    return JobRecord(
        id=job_id, kind="edit", user_id=user_id, guild_id=guild_id, channel_id=1, provider="replicate",
        model="black-forest-labs/flux-kontext-dev", request="{}", prompt="p", application_id=2, status=status,
        owner="me", delivered_at=1.0 if State(status).terminal else None,
    )


async def test_admit_reads_storage(store: Storage, clock: Clock) -> None:
    settings = GuildSettings(cooldown_seconds=60, daily_quota_per_user=2, max_concurrent_per_user=1)
    assert (await admit(store, settings, 1, GUILD, clock.now)).allowed
    await store.create_job(job("a", user_id=1), b"i", None)
    cooling = await admit(store, settings, 1, GUILD, clock.now + 1)
    assert not cooling.allowed and cooling.retry_at == T0 + 60 and "cooldown" in cooling.message
    clock.now += 60
    busy = await admit(store, settings, 1, GUILD, clock.now)
    assert not busy.allowed and "running" in busy.message
    assert (await admit(store, settings, 2, GUILD, clock.now)).allowed  # someone else is not held up
    await store.move_job("a", "me", State.SUBMITTING)
    await store.move_job("a", "me", State.RUNNING)
    await store.store_outputs("a", "me", [(b"out", False)])  # succeeded: no longer running, uses the quota
    await store.mark_delivered("a", "me")
    await store.create_job(job("b", user_id=1, status="failed"), b"i", None)  # failures use no quota
    clock.now += 60
    assert (await admit(store, settings, 1, GUILD, clock.now)).allowed
    await store.create_job(job("c", user_id=1, status="succeeded"), b"i", None)
    clock.now += 60
    spent = await admit(store, settings, 1, GUILD, clock.now)
    assert not spent.allowed and spent.retry_at == T0 + DAY
    assert (await admit(store, settings, 1, GUILD + 1, clock.now)).allowed  # quotas are per server
    # Erasing history does not give the quota back.
    assert await store.erase_user_history(1) == 3
    assert not (await admit(store, settings, 1, GUILD, clock.now)).allowed
    clock.now = T0 + DAY + 1
    assert (await admit(store, settings, 1, GUILD, clock.now)).allowed


async def test_sequential_burst_admits_exactly_the_quota(store: Storage, clock: Clock) -> None:
    settings = GuildSettings(daily_quota_per_user=7, max_concurrent_per_user=20)
    admitted = 0
    for n in range(50):
        decision = await admit(store, settings, 1, GUILD, clock.now)
        if decision.allowed:
            await store.create_job(job(f"j{n}", user_id=1), b"i", None)
            admitted += 1
        clock.now += 0.01
    assert admitted == 7


async def test_concurrent_burst_through_the_gate_admits_exactly_the_quotas(store: Storage, clock: Clock) -> None:
    settings = GuildSettings(daily_quota_per_user=3, daily_quota_per_guild=10, max_concurrent_per_user=20)
    gate = LimitGate(store, clock=clock)
    admitted: dict[int, int] = {1: 0, 2: 0, 3: 0, 4: 0}

    async def attempt(n: int, user_id: int) -> None:
        async with gate.admission(settings, user_id, GUILD) as decision:
            if decision.allowed:
                await store.create_job(job(f"j{n}", user_id=user_id), b"i", None)
                admitted[user_id] += 1

    await asyncio.gather(*(attempt(n, 1 + n % 4) for n in range(200)))
    assert max(admitted.values()) == 3  # per person
    assert sum(admitted.values()) == 10  # per server
    assert await store.count_jobs(guild_id=GUILD, since=0) == 10
