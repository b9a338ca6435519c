"""Prompt term filter (evasions caught, innocent words spared) and usage limits (including under a burst)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot import moderation
from bot.config import OperatorRules
from bot.guild_settings import GuildSettings
from bot.lifecycle.states import State
from bot.moderation import (
    FieldsResult,
    FilterResult,
    LimitDecision,
    LimitGate,
    TermFilter,
    admit,
    blocked_notice,
    check_limits,
    compile_filter,
    guild_filter,
    normalise,
    share_refusal,
)
from bot.storage import JobRecord, OutputMeta, Storage

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


def test_punctuation_in_a_term_separates_its_words_and_is_never_pattern_syntax() -> None:
    terms = TermFilter([("x(.*)", "block"), ("a|b", "block"), ("bad-word", "strip")])
    assert terms.check("xyz and a or b").blocked_term is None
    assert terms.check("literally x(.*) here").blocked_term == "x(.*)"  # the word "x"
    assert terms.check("a|b").blocked_term == "a|b" and terms.check("a b").blocked_term == "a|b"
    assert terms.check("a bad word here").stripped_prompt == "a here"


WORDS = TermFilter([("nude", "block"), ("kill", "block"), ("ass", "block"), ("tit", "block"), ("cunt", "block"),
                    ('"hell"', "block"), ("“cock”", "block"), ("pussy", "block")])


@pytest.mark.parametrize(("prompt", "term"), [
    # plurals and compounds: terms of 4+ letters match words that start with them, shorter ones their plural
    ("nudes", "nude"), ("a nudebeach", "nude"), ("killers", "kill"), ("asses", "ass"), ("two tits", "tit"),
    ("pussies", "pussy"), ("hells", '"hell"'), ("cocks", "“cock”"), ("Nudity", None), ("denude", None),
    # separators other than spaces between letters written one by one
    ("n/u/d/e", "nude"), ("n*u*d*e", "nude"), ("n,u,d,e", "nude"), ("n.u.d.e", "nude"), ("n_u_d_e", "nude"),
    ("n - u - d - e s", "nude"), ("n|u|d|e", "nude"), ("k;i;l;l", "kill"),
    # leetspeak: 1, | and a capital I read as i or as l; ! as i
    ("ki11", "kill"), ("ki||", "kill"), ("k1ll", "kill"), ("kiII", "kill"), ("KILL", "kill"), ("4$$!", "ass"),
    ("t!t", "tit"),
    # look-alike letters outside any hand-made table: Armenian, small capitals, fullwidth, Cherokee, enclosed
    ("ոսde", "nude"), ("ɴᴜᴅᴇ", "nude"), ("ｎｕｄｅ", "nude"), ("Ꮶill", "kill"), ("🅽🆄🅳🅴", "nude"),
    ("🇳🇺🇩🇪", "nude"), ("𝐧𝐮𝐝𝐞", "nude"), ("ⓝⓤⓓⓔ", "nude"), ("кill", "kill"), ("nüde", "nude"),
    # invisible fillers: nothing inside a word, a space between words
    ("nu\u3164de", "nude"), ("nu\u2800de", "nude"), ("n\u2800u\u2800d\u2800e", "nude"), ("big\u3164ass", "ass"),
    ("big\u2800ass", "ass"), ("big\u200bass", "ass"),
])
def test_evasions_in_issue_10_are_caught(prompt: str, term: str | None) -> None:
    assert WORDS.check(prompt).blocked_term == term


@pytest.mark.parametrize("prompt", [
    "a class photo", "my assistant", "Scunthorpe", "a title card", "hello world", "a sea shell", "skill tree",
    "a kilt", "titanic", "assess the damage", "a cocktail", "a passage", "bass", "a mass of clouds", "heil",
    "helium", "a 1000 piece puzzle", "Wow! Amazing!", "cat|dog", "I like it", "a b c d e",
])
def test_innocent_words_pass(prompt: str) -> None:
    assert WORDS.check(prompt) == FilterResult(None, prompt, ())


def test_terms_in_scripts_without_spaces_match_inside_sentences() -> None:
    terms = TermFilter([("死ね", "block"), ("ฆ่า", "block"), ("блядь", "block")])
    assert terms.check("お前は死ね!").blocked_term == "死ね"
    assert terms.check("อย่าฆ่าเขา").blocked_term == "ฆ่า"
    assert terms.check("死んだね").blocked_term is None
    assert terms.check("ты БЛЯДЬ").blocked_term == "блядь"  # Cyrillic still goes by words


def test_i_and_l_stay_apart_unless_the_prompt_leaves_it_open() -> None:
    heil = TermFilter([("heil", "block")])
    assert heil.check("hell").blocked_term is None and heil.check("heil").blocked_term == "heil"
    assert heil.check("he1l").blocked_term == "heil" and heil.check("HEIL").blocked_term == "heil"
    assert TermFilter([("kill", "block")]).check("k1l1").blocked_term is None  # documented: one reading per text


@pytest.mark.parametrize("code", [
    0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x180B, 0x180E, 0x200B, 0x200C, 0x200D, 0x200E, 0x202A,
    0x2060, 0x2064, 0x2066, 0x3164, 0xFE00, 0xFE0F, 0xFEFF, 0xFFA0, 0x1BCA0, 0x1D173, 0xE0001, 0xE0041, 0xE01EF,
])
def test_every_default_ignorable_code_point_is_invisible(code: int) -> None:
    """A sample across the blocks Unicode's Default_Ignorable_Code_Point covers (the filter reads the property)."""
    filler = chr(code)
    assert WORDS.check(f"nu{filler}de").blocked_term == "nude"
    assert WORDS.check(f"big{filler}ass").blocked_term == "ass"


def test_strip_takes_plurals_and_compounds_whole() -> None:
    terms = TermFilter([("ugly", "strip"), ("ass", "strip")])
    result = terms.check("an UGLYFACE cat, uglies and asses; a class act")
    assert result == FilterResult(None, "an cat, and ; a class act", ("ugly", "ass"))


def test_a_term_hidden_inside_another_refuses_instead_of_stripping_again() -> None:
    terms = TermFilter([("ugly", "strip")])
    assert terms.check("u g ugly l y") == FilterResult("ugly", "u g ugly l y", ())
    assert terms.check("ugly u g l y ugly").stripped_prompt == ""  # all found at once: nothing hidden


def test_a_block_term_beats_a_strip_term_with_the_same_letters() -> None:
    assert TermFilter([("b4d", "strip"), ("bad", "block")]).check("so bad").blocked_term == "bad"
    assert TermFilter([("bad", "block"), ("b4d", "strip")]).check("so bad").blocked_term == "bad"


def test_check_fields_names_the_field_and_strips_only_free_text() -> None:
    terms = TermFilter([("ugly", "strip"), ("nude", "block")])
    clean = terms.check_fields({"prompt": "an ugly vase", "lora": "owner/watercolour"})
    assert clean == FieldsResult(None, None, {"prompt": "an vase", "lora": "owner/watercolour"}, ("ugly",))
    lora = terms.check_fields({"prompt": "a vase", "lora": "https://example.com/n-u-d-e.safetensors"})
    assert (lora.blocked_term, lora.blocked_field, lora.blocked) == ("nude", "lora", True)
    # A LoRA name cannot lose a word without naming something else: any term refuses it.
    stripped = terms.check_fields({"prompt": "a vase", "lora": "ugly-style"})
    assert (stripped.blocked_term, stripped.blocked_field) == ("ugly", "lora")
    assert terms.check_fields({"prompt": "nudes", "lora": "x"}).blocked_field == "prompt"
    assert terms.check_fields({"caption": "ugly"}, strippable=("caption",)).values == {"caption": ""}


def test_blocked_notice_names_who_where_and_which_term() -> None:
    notice = blocked_notice(1001, 3001, "nude")
    assert "<@1001>" in notice and "<#3001>" in notice and "“nude”" in notice and "prompt" in notice
    assert "lora" in blocked_notice(1001, 3001, "nude", "lora")


def test_empty_filter_and_cache() -> None:
    assert TermFilter([]).check("anything").stripped_prompt == "anything"
    first = compile_filter((("ass", "block"),))
    assert compile_filter((("ass", "block"),)) is first
    assert compile_filter((("ass", "strip"),)) is not first


def test_a_crafted_prompt_is_read_at_most_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each strip used to reveal the next "a b" and cost a whole pass: now one pass, one re-check, refused."""
    terms = TermFilter([(f"word{n}x", "block") for n in range(500)] + [("ab", "strip")])
    calls: list[str] = []
    monkeypatch.setattr(moderation, "normalise", lambda text: calls.append(text) or normalise(text))
    crafted = "a " * 500 + "b " * 500
    assert terms.check(crafted) == FilterResult("ab", crafted, ())
    assert len(calls) == 2


def test_terms_made_to_overlap_cost_no_more_than_the_prompt_is_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile server's terms "aa", "aaa", … "a"×100 would find ~100 occurrences per letter of "a a a …"."""
    terms = TermFilter([("a" * k, "strip") for k in range(2, 101)])
    made: list[object] = []
    hit = moderation._Hit
    monkeypatch.setattr(moderation, "_Hit", lambda *args: made.append(args) or hit(*args))
    prompt = "a " * 1000
    result = terms.check(prompt)
    assert result.blocked and result.stripped_prompt == prompt  # refused rather than counted to the end
    assert len(made) <= len(prompt)
    assert terms.check("a a a").stripped_prompt == ""  # an ordinary number of occurrences is stripped


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


async def test_queue_caps_hold_under_a_burst_and_count_only_waiting_jobs(store: Storage, clock: Clock) -> None:
    settings = GuildSettings(max_concurrent_per_user=20)
    admitted: dict[tuple[int, int | None], int] = {}
    refusals: set[str] = set()

    async def attempt(gate: LimitGate, n: int, user_id: int, guild_id: int | None = GUILD) -> None:
        async with gate.admission(settings, user_id, guild_id) as decision:
            if decision.allowed:
                await store.create_job(job(f"j{n}", user_id=user_id, guild_id=guild_id), b"i", None)
                admitted[user_id, guild_id] = admitted.get((user_id, guild_id), 0) + 1
            else:
                refusals.add(decision.message)

    per_member = LimitGate(store, rules=OperatorRules(max_queued_per_member=3, max_queued_per_server=0), clock=clock)
    await asyncio.gather(*(attempt(per_member, n, 1 + n % 4) for n in range(100)))
    assert admitted == {(u, GUILD): 3 for u in (1, 2, 3, 4)}
    assert refusals == {"You already have 3 jobs waiting to start; the bot holds at most 3 waiting for one person. "
                        "Try again when one has started."}
    await attempt(per_member, 100, 1, None)  # the member's cap counts their DMs and every server together
    assert (1, None) not in admitted

    per_server = LimitGate(store, rules=OperatorRules(max_queued_per_member=0, max_queued_per_server=15), clock=clock)
    await asyncio.gather(*(attempt(per_server, n, 5 + n % 4) for n in range(200, 300)))
    assert await store.waiting_jobs(guild_id=GUILD) == 15
    assert any(m.startswith("This server already has 15 jobs waiting to start") for m in refusals), refusals
    await attempt(per_server, 300, 5, GUILD + 1)  # another server is not held up by this one's queue
    await attempt(per_server, 301, 5, None)  # nor is a DM
    assert admitted[5, GUILD + 1] == admitted[5, None] == 1

    # A job that left for its provider no longer waits: its place is free again.
    await store.move_job("j0", "me", State.SUBMITTING)
    await attempt(per_member, 400, 1)
    assert admitted[1, GUILD] == 4


async def test_operator_daily_quota_counts_every_server_and_dm(store: Storage, clock: Clock) -> None:
    rules = OperatorRules(member_daily_quota=2)
    settings = GuildSettings(max_concurrent_per_user=20)
    await store.create_job(job("a", user_id=1, guild_id=GUILD, status="succeeded"), b"i", None)
    clock.now += 10
    await store.create_job(job("b", user_id=1, guild_id=None, status="succeeded"), b"i", None)
    for guild_id in (GUILD + 1, None):
        decision = await admit(store, settings, 1, guild_id, clock.now, rules)
        assert not decision.allowed and "every server and DM" in decision.message
        assert decision.retry_at == T0 + DAY
    assert (await admit(store, settings, 2, GUILD, clock.now, rules)).allowed
    assert (await admit(store, settings, 1, GUILD, clock.now, OperatorRules())).allowed  # 0 = unlimited


# -- sharing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel_nsfw", "flagged", "spoilered", "reason"),
    [
        (False, False, False, None),
        (True, False, False, "made in an age-restricted channel"),
        (False, True, False, "flagged as sensitive"),
        (False, False, True, "flagged as sensitive"),
        (True, True, True, "made in an age-restricted channel"),
    ],
)
def test_age_restricted_and_flagged_results_go_only_to_an_age_restricted_gallery(
    channel_nsfw: bool, flagged: bool, spoilered: bool, reason: str | None
) -> None:
    record = JobRecord(id="j1", kind="fill", user_id=1, guild_id=GUILD, channel_id=2, provider="local",
                       model="m", request="{}", prompt="p", application_id=3, channel_nsfw=channel_nsfw,
                       outputs=(OutputMeta("a.png", 8, 8), OutputMeta("b.png", 8, 8, flagged=flagged)))
    refusal = share_refusal(record, spoilered=spoilered, gallery_is_nsfw=False)
    assert (refusal is None) == (reason is None)
    if reason is not None:
        assert refusal is not None and reason in refusal and "Nothing was shared" in refusal
    assert share_refusal(record, spoilered=spoilered, gallery_is_nsfw=True) is None
