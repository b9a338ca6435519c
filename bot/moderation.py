"""Prompt filtering and usage limits: pure decisions the cogs apply before a job is recorded and submitted.

`TermFilter` matches a server's blocked terms against a normalised copy of the prompt, so look-alike letters,
leetspeak, zero-width characters and s.p.a.c.e.d letters do not slip through, while whole-word matching keeps
"class" safe from "ass". `check_limits` decides cooldowns, concurrency and daily quotas; `LimitGate` makes that
decision hold under a burst of commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import time
import unicodedata
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass

from bot.guild_settings import GuildSettings
from bot.storage import JOB_STATUSES, QUOTA_WINDOW_SECONDS, Storage

log = logging.getLogger(__name__)

# Look-alikes, applied after NFKC + casefold + dropping combining marks (which already turn fullwidth and
# accented letters into plain ones). Cyrillic and Greek letters that render like Latin ones, a few Latin
# letters NFKD does not decompose, and leetspeak. Leetspeak costs some false positives: "a55" reads as "ass",
# and a term is matched against numbers that spell it. We accept that for the evasion it stops; "!" and "|"
# are left alone because they often end words and mapping them would hide the word boundary.
_LOOKALIKES = str.maketrans({
    # Cyrillic
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ѕ": "s", "ј": "j",
    "ԁ": "d", "һ": "h", "ӏ": "l", "к": "k", "ԛ": "q", "ԝ": "w", "в": "b", "м": "m", "т": "t", "н": "h",
    # Greek
    "α": "a", "ο": "o", "ν": "v", "ι": "i", "κ": "k", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ε": "e",
    "β": "b", "γ": "y", "η": "n", "ϲ": "c",
    # Latin letters without a decomposition
    "ı": "i", "ł": "l", "ø": "o", "đ": "d", "ƒ": "f", "ɡ": "g",
    # leetspeak
    "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
})
_DROPPED_CATEGORIES = frozenset({"Mn", "Me", "Cf"})  # combining marks; zero-width and other format characters
_SEPARATOR = r"[\s._\-]+"
_WORD_BEFORE = r"(?<![^\W_])"  # not preceded by a letter or digit ("_" counts as a separator)
_WORD_AFTER = r"(?![^\W_])"


@functools.lru_cache(maxsize=8192)
def _fold(char: str) -> str:
    """What one character becomes for matching: possibly nothing, possibly several characters ("ﬁ" → "fi")."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", char).casefold())
    return "".join(c for c in folded if unicodedata.category(c) not in _DROPPED_CATEGORIES).translate(_LOOKALIKES)


@dataclass(frozen=True)
class Normalised:
    """Text as matched, and for each of its characters the position in the original it came from."""

    text: str
    origin: tuple[int, ...]
    source: str

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The original text's span for `text[start:end]`, including dropped characters (marks, zero-width)
        inside it and straight after it, so removing it leaves no orphaned accents."""
        first = self.origin[start]
        last = self.origin[end - 1] + 1
        while last < len(self.source) and not _fold(self.source[last]):
            last += 1
        return first, last


def normalise(text: str) -> Normalised:
    """NFKC, casefold, drop combining marks and zero-width characters, map look-alikes and leetspeak."""
    chars: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        for out in _fold(char):
            chars.append(out)
            origin.append(index)
    return Normalised("".join(chars), tuple(origin), text)


def _term_pattern(term: str) -> tuple[str, int] | None:
    """Regex for one term as written and s.p.a.c.e.d out, and its length for ordering; None if nothing is left."""
    words = [w for w in re.split(_SEPARATOR, normalise(term).text) if w]
    if not words:
        return None
    if all(len(w) == 1 for w in words):  # the moderator wrote "b.a.d": that is the word "bad"
        words = ["".join(words)]
    compact = _SEPARATOR.join(re.escape(w) for w in words)
    letters = [c for w in words for c in w]
    spaced = _SEPARATOR.join(re.escape(c) for c in letters)
    body = compact if len(letters) < 2 else f"{compact}|{spaced}"
    return f"{_WORD_BEFORE}(?:{body}){_WORD_AFTER}", len(letters)


@dataclass(frozen=True)
class FilterResult:
    """`blocked_term` (as the moderator wrote it) refuses the prompt; otherwise `stripped_prompt` is what to
    send, with `stripped_terms` removed from it."""

    blocked_term: str | None
    stripped_prompt: str
    stripped_terms: tuple[str, ...] = ()

    @property
    def blocked(self) -> bool:
        return self.blocked_term is not None


class TermFilter:
    """One server's blocked terms compiled into a single case-insensitive regex over the normalised prompt."""

    def __init__(self, terms: Iterable[tuple[str, str]]) -> None:
        self._terms: list[tuple[str, str]] = []
        branches: list[tuple[int, str]] = []
        for term, action in terms:
            compiled = _term_pattern(term)
            if compiled is None:
                log.warning("filter term %r has nothing to match after normalisation; skipped", term)
                continue
            pattern, length = compiled
            branches.append((length, f"(?P<t{len(self._terms)}>{pattern})"))
            self._terms.append((term, action))
        # Longest first, so "bad word" wins over "bad" where both start.
        branches.sort(key=lambda b: -b[0])
        self._regex = re.compile("|".join(p for _, p in branches), re.IGNORECASE) if branches else None

    def __len__(self) -> int:
        return len(self._terms)

    def _matches(self, text: str) -> tuple[Normalised, list[tuple[re.Match[str], str, str]]]:
        norm = normalise(text)
        if self._regex is None:
            return norm, []
        found = []
        for match in self._regex.finditer(norm.text):
            assert match.lastgroup is not None
            term, action = self._terms[int(match.lastgroup[1:])]
            found.append((match, term, action))
        return norm, found

    def check(self, prompt: str) -> FilterResult:
        """Block if any 'block' term appears; otherwise remove every 'strip' term from the original text.

        The result is checked again after stripping, since removing words can bring others together.
        """
        text = prompt
        stripped: list[str] = []
        while True:
            norm, found = self._matches(text)
            blocked = next((term for _, term, action in found if action == "block"), None)
            if blocked is not None:
                return FilterResult(blocked, prompt, ())
            if not found:
                return FilterResult(None, text, tuple(dict.fromkeys(stripped)))
            spans = [norm.original_span(m.start(), m.end()) for m, _, _ in found]
            stripped.extend(term for _, term, _ in found)
            text = _remove(text, spans)


def _remove(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """`text` without `spans`, white space at each cut collapsed to one space (none at either end)."""
    kept: list[str] = []
    position = 0
    for start, end in spans:
        kept.append(text[position:start])
        position = end
    kept.append(text[position:])
    result = kept[0]
    for piece in kept[1:]:
        left, right = result.rstrip(), piece.lstrip()
        gap = " " if left and right and (left != result or right != piece) else ""
        result = left + gap + right
    return result.strip()


@functools.lru_cache(maxsize=256)
def compile_filter(terms: tuple[tuple[str, str], ...]) -> TermFilter:
    """A cached TermFilter: the same list of terms compiles once (a changed list is a new key)."""
    return TermFilter(terms)


async def guild_filter(storage: Storage, guild_id: int) -> TermFilter:
    terms = await storage.blocked_terms(guild_id)
    return compile_filter(tuple((t.term, t.action) for t in terms))


@dataclass(frozen=True)
class LimitDecision:
    """Whether a job may start; if not, a message naming the limit and, where known, when to retry (unix time,
    also written into the message as a Discord relative timestamp)."""

    allowed: bool
    message: str = ""
    retry_at: float | None = None


ALLOWED = LimitDecision(True)


def _jobs(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _quota_retry(times: Sequence[float], quota: int, now: float) -> float | None:
    """When a rolling-window quota frees a slot again, or None if it is not used up."""
    in_window = sorted(t for t in times if t > now - QUOTA_WINDOW_SECONDS)
    if quota <= 0 or len(in_window) < quota:
        return None
    return in_window[len(in_window) - quota] + QUOTA_WINDOW_SECONDS


def check_limits(
    settings: GuildSettings,
    *,
    user_recent_job_times: Sequence[float],
    user_active: int,
    user_today: Sequence[float],
    guild_today: Sequence[float],
    now: float,
) -> LimitDecision:
    """Decide whether a person may start a job now.

    `user_recent_job_times`: creation times of their recent jobs (for the cooldown); `user_active`: their queued
    or running jobs; `user_today`/`guild_today`: creation times of jobs counting toward the quotas. When several
    limits apply, the one that lasts longest is reported, since retrying before it ends is pointless.
    """
    refusals: list[LimitDecision] = []
    if user_active >= settings.max_concurrent_per_user:
        refusals.append(LimitDecision(
            False,
            f"You already have {_jobs(user_active)} running; this server allows "
            f"{settings.max_concurrent_per_user} at a time. Try again when one finishes.",
        ))
    if settings.cooldown_seconds and user_recent_job_times:
        ready = max(user_recent_job_times) + settings.cooldown_seconds
        if now < ready:
            retry = math.ceil(ready)
            refusals.append(LimitDecision(
                False,
                f"This server has a {_duration(settings.cooldown_seconds)} cooldown between jobs: "
                f"try again <t:{retry}:R>.",
                retry,
            ))
    quotas = (
        (user_today, settings.daily_quota_per_user,
         f"You have used your {_jobs(settings.daily_quota_per_user)} for the last 24 hours in this server"),
        (guild_today, settings.daily_quota_per_guild,
         f"This server has used its {_jobs(settings.daily_quota_per_guild)} for the last 24 hours"),
    )
    for times, quota, used_up in quotas:
        quota_retry = _quota_retry(times, quota, now)
        if quota_retry is not None:
            retry = math.ceil(quota_retry)
            refusals.append(LimitDecision(False, f"{used_up}: try again <t:{retry}:R>.", retry))
    if not refusals:
        return ALLOWED
    return max(refusals, key=lambda d: d.retry_at or 0.0)


async def admit(
    storage: Storage, settings: GuildSettings, user_id: int, guild_id: int | None, now: float
) -> LimitDecision:
    """Read the counts `check_limits` needs and decide. Cooldown and quotas count jobs in this server
    (`guild_id` None, a DM: anywhere); concurrency counts the person's jobs everywhere.

    Reserve before submit: call this and record the job (`Storage.create_job`) under the same lock —
    `LimitGate.admission` — or a burst could pass the same check twice.
    """
    recent: list[float] = []
    if settings.cooldown_seconds:
        recent = await storage.job_times(
            user_id=user_id, guild_id=guild_id, since=now - settings.cooldown_seconds, statuses=JOB_STATUSES
        )
    since = now - QUOTA_WINDOW_SECONDS
    user_today: list[float] = []
    if settings.daily_quota_per_user:
        user_today = await storage.job_times(user_id=user_id, guild_id=guild_id, since=since)
    guild_today: list[float] = []
    if settings.daily_quota_per_guild and guild_id is not None:
        guild_today = await storage.job_times(guild_id=guild_id, since=since)
    return check_limits(
        settings,
        user_recent_job_times=recent,
        user_active=await storage.active_jobs(user_id),
        user_today=user_today,
        guild_today=guild_today,
        now=now,
    )


class LimitGate:
    """Serialises admission per person (and per server when it has a daily quota), so limits hold when many
    commands arrive at once.

    Usage::

        async with gate.admission(settings, user_id, guild_id) as decision:
            if decision.allowed:
                await storage.create_job(...)  # still inside the lock: the next caller sees this job
    """

    def __init__(self, storage: Storage, *, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._clock = clock
        self._locks: weakref.WeakValueDictionary[tuple[str, int], asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, key: tuple[str, int]) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    @contextlib.asynccontextmanager
    async def admission(
        self, settings: GuildSettings, user_id: int, guild_id: int | None
    ) -> AsyncIterator[LimitDecision]:
        # Only a server-wide quota needs the server lock (cooldown, concurrency and personal quotas count one
        # person's jobs); taking it always serialised every admission in a busy server behind database writes.
        # Always server lock first, then the person's: a fixed order cannot deadlock.
        locks = [self._lock(("user", user_id))]
        if guild_id is not None and settings.daily_quota_per_guild > 0:
            locks.insert(0, self._lock(("guild", guild_id)))
        async with contextlib.AsyncExitStack() as stack:
            for lock in locks:
                await stack.enter_async_context(lock)
            yield await admit(self._storage, settings, user_id, guild_id, self._clock())
