"""Prompt filtering and usage limits: pure decisions the cogs apply before a job is recorded and submitted.

`TermFilter` finds a server's (or the operator's) blocked terms in a prompt (or any free-text field);
`check_limits` decides cooldowns, concurrency, daily quotas and the operator's queue caps; `LimitGate` makes that
decision hold under a burst of commands.

How a term matches (moderators are told the short form in `/fill-settings block-term`):

- Text is compared after normalisation: NFKC and case folding; accents and other combining marks dropped;
  look-alike letters read as the Latin letter they imitate, from Unicode data (TR39 confusables, via
  `confusable_homoglyphs`, and the names of Latin letter variants such as small capitals "ᴅ" or hooked "ɗ");
  leetspeak digits and symbols read as letters (0 o, 3 e, 4 a, 5 s, 7 t, @ a, $ s).
- Some characters have two readings and a term found under either counts: "1", "|", a capital "I" and
  vertical-stroke look-alikes read as "i" or as "l" (all as one or all as the other, so "ki11", "ki||" and
  "k1ll" are "kill"; a word mixing both, "k1l1", is not caught); "!" and "|" as letters or as punctuation
  ("sh!t", "big ass!"); default-ignorable code points (zero-width characters, U+3164 HANGUL FILLER, variation
  selectors: every one Unicode lists) and U+2800 BRAILLE PATTERN BLANK as nothing or as a space.
- Words are runs of letters and digits; every other character separates words, in the prompt and in the term
  alike: punctuation in a term is not matched literally ("a|b" is the two words "a b").
- A term matches only at the start of a word, never inside one: "ass" spares "class", "bass", "Scunthorpe"-like
  words. A term whose last word has `MIN_COMPOUND_LETTERS` letters or more also matches longer words that start
  with it, so plurals and compounds are caught ("nude": "nudes", "nudebeach"); shorter ones are too often the
  start of innocent words ("ass": "assistant", "tit": "title"), so they match the whole word and its plural
  only ("asses"). A term written in double quotes is matched that way whatever its length: `"hell"` spares
  "hello", `"cock"` spares "cocktail".
- Letters written one by one — "n u d e", "n/u/d/e", "n*u*d*e", "n.u.d.e", "n_u_d_e" — match anywhere in such
  a run of single letters. Scripts written without spaces (Chinese, Japanese, Thai, …) have no word starts to go
  by: each of their characters counts as a letter on its own, so a term in them matches anywhere in such a run.
- 'strip' terms are removed from the original text (with the accents and invisible characters inside them;
  plurals and compounds as whole words). The result is checked once more, since removing words can bring
  letters together; if it still holds any term the prompt is refused instead of stripped again: only a crafted
  prompt hides a term inside another, and stripping until nothing is left could go on for as long as the prompt.
  A prompt holding more term occurrences than characters (only terms made to overlap one another do that) is
  refused too, without counting them all.

Cost: the prompt is normalised once (per-character work is cached), read at most three ways, and each reading is
scanned once by Aho–Corasick automata holding every term (pyahocorasick), so a check is linear in the prompt's
length however many terms there are. The automata are built once per list of terms.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import logging
import math
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import ahocorasick
import regex
from confusable_homoglyphs import confusables

from bot.config import OperatorRules
from bot.guild_settings import GuildSettings
from bot.storage import JOB_STATUSES, QUOTA_WINDOW_SECONDS, JobRecord, Storage

log = logging.getLogger(__name__)

DEFAULT_RULES = OperatorRules()  # the operator's rules while `.env` sets none
MIN_COMPOUND_LETTERS = 4  # a term's last word this long also matches words that start with it

# In normalised text: a character read both as nothing and as a space (see the module docstring).
_FILLER = "\x00"  # never produced otherwise: control characters fold to a space
_IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
# Not default-ignorable (it is a symbol) but drawn blank, and the usual "invisible" filler after U+3164.
_BRAILLE_BLANK = "\u2800"
# Names of Latin letter variants NFKC leaves alone: "LATIN LETTER SMALL CAPITAL D", "LATIN SMALL LETTER D WITH
# HOOK", "NEGATIVE SQUARED LATIN CAPITAL LETTER D", "REGIONAL INDICATOR SYMBOL LETTER D".
_LATIN_LETTER = re.compile(
    r"(?:[A-Z ]+ )?(?:LATIN (?:SMALL |CAPITAL )?LETTER (?:SMALL CAPITAL )?|REGIONAL INDICATOR SYMBOL LETTER )"
    r"([A-Z])(?: WITH .+)?"
)
# Scripts written without spaces between words (Unicode line-breaking classes ID, CJ and SA: Chinese, Japanese,
# Thai, …): each of their characters is treated as a letter written on its own.
_UNSPACED = regex.compile(
    r"[\p{Line_Break=Ideographic}\p{Line_Break=Conditional_Japanese_Starter}\p{Line_Break=Complex_Context}]"
)
_LEET = {"0": "o", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
_TWO_READINGS = "1|!"  # kept as they are by normalisation; each reading decides what they are


def _ascii_fold(char: str) -> str:
    """ASCII: "I" becomes the i-or-l "1", letters lower case, leetspeak letters, other punctuation a space."""
    if char == "I":
        return "1"
    if char in _LEET:
        return _LEET[char]
    if char.isalnum() or char in _TWO_READINGS:
        return char.lower()
    return " "


_ASCII = {code: _ascii_fold(chr(code)) for code in range(128)}


@functools.cache
def _confusable_letters() -> dict[str, str]:
    """Non-ASCII characters that TR39 lists as confusable with exactly one ASCII letter or digit (directly, or
    through a Latin letter variant: Cyrillic "н" → "ʜ" → "h"), folded as ASCII ("l" becomes the i-or-l "1")."""
    table: dict[str, str] = {}
    for char, entries in confusables.confusables_data.items():
        if len(char) != 1 or char.isascii():
            continue
        found = {target for entry in entries if (target := _ascii_target(str(entry["c"]))) is not None}
        if len(found) == 1:
            table[char] = found.pop()
    return table


def _ascii_target(target: str) -> str | None:
    """The ASCII letter or digit a confusables target stands for, folded; None if it is none."""
    plain = "".join(c for c in unicodedata.normalize("NFD", target) if not unicodedata.combining(c))
    if len(plain) != 1:
        return None
    if not plain.isascii():
        latin = _LATIN_LETTER.fullmatch(unicodedata.name(plain, ""))
        return latin[1].lower() if latin else None
    if not plain.isalnum():
        return None
    return "1" if plain in "Il" else _ASCII[ord(plain.lower())]


def _lookalike(char: str) -> str:
    """One folded non-ASCII character as matched: the Latin letter it imitates, itself, or a space."""
    table = _confusable_letters()
    for form in (char, char.upper()):  # "к" is listed only as capital "К" → "K"
        if form in table:
            return table[form]
    category = unicodedata.category(char)
    latin = _LATIN_LETTER.fullmatch(unicodedata.name(char, "")) if category[0] in "LS" else None
    if latin:
        return latin[1].lower()
    if _UNSPACED.match(char):
        return f" {char} "
    return char if char.isalnum() or category == "Mc" else " "


@functools.lru_cache(maxsize=65_536)
def _fold(char: str) -> str:
    """What one character becomes for matching: possibly nothing, possibly several characters ("ﬁ" → "fi")."""
    if char.isascii():
        return _ASCII[ord(char)]
    if char == _BRAILLE_BLANK or _IGNORABLE.match(char):
        return _FILLER
    out: list[str] = []
    composed = unicodedata.normalize("NFKC", char).replace("I", "1").casefold()
    for part in unicodedata.normalize("NFKD", composed):
        if part.isascii():
            out.append(_ASCII[ord(part)])
        elif unicodedata.category(part) not in ("Mn", "Me") and not _IGNORABLE.match(part):
            out.append(_lookalike(part))
    return "".join(out)


@dataclass(frozen=True)
class Normalised:
    """Text as matched, and for each of its characters the position in the original it came from."""

    text: str
    origin: tuple[int, ...]
    source: str

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The original text's span for `text[start:end]`, including dropped characters (marks) straight after
        it, so removing it leaves no orphaned accents."""
        first = self.origin[start]
        last = self.origin[end - 1] + 1
        while last < len(self.source) and not _fold(self.source[last]):
            last += 1
        return first, last


def normalise(text: str) -> Normalised:
    """Fold every character (see the module docstring); invisible fillers stay as one marker each."""
    if text.isascii():
        return Normalised(text.translate(_ASCII), tuple(range(len(text))), text)
    parts = [_fold(char) for char in text]
    origin = tuple(index for index, part in enumerate(parts) for _ in part)
    return Normalised("".join(parts), origin, text)


# The readings of normalised text: "1", "|", "!" and fillers each decided one way (see the module docstring).
_READINGS = (
    str.maketrans({"1": "i", "|": "i", "!": "i"}),
    str.maketrans({"1": "l", "|": "l", "!": "i"}),
    str.maketrans({"1": "i", "|": " ", "!": " ", _FILLER: " "}),
)
_WORD = re.compile(r"[^ ]+")


def _readings(text: str) -> list[str]:
    """The distinct readings of `text` (one for most prompts); each keeps every character's position."""
    if not any(c in text for c in (*_TWO_READINGS, _FILLER)):
        return [text]
    return list(dict.fromkeys(text.translate(table) for table in _READINGS))


def _words(reading: str) -> list[tuple[int, int, str]]:
    """(start, end, word) for each word of a reading; fillers left inside words join their parts."""
    found = ((m.start(), m.end(), m.group().replace(_FILLER, "")) for m in _WORD.finditer(reading))
    return [word for word in found if word[2]]


def _term_keys(term: str) -> tuple[list[str], str | None] | None:
    """The automaton keys for one term: word keys over " word word " text, and the spelled-out letters (None
    below two letters). None if nothing is left to match after normalisation."""
    exact = len(term) > 2 and term[0] in "\"“" and term[-1] in "\"”"
    reading = normalise(term[1:-1] if exact else term).text.replace(_FILLER, "").translate(_READINGS[2])
    words = reading.split()
    if not words:
        return None
    if len(words) > 1 and all(len(w) == 1 for w in words):  # the moderator wrote "b.a.d": that is the word "bad"
        words = ["".join(words)]
    phrase = " " + " ".join(words)
    stems = [phrase]
    if len(words[-1]) > 1 and phrase.endswith("y"):
        stems.append(phrase[:-1] + "ies")
    if exact or len(words[-1]) < MIN_COMPOUND_LETTERS:
        keys = [stem + " " for stem in stems] + [phrase + "s ", phrase + "es "]
    else:
        keys = stems  # no closing space: any word that starts with the term
    letters = "".join(words)
    return keys, letters if len(letters) >= 2 else None


class _Automaton:
    """An Aho–Corasick automaton from keys to (term index, key length)."""

    def __init__(self, keys: Mapping[str, int]) -> None:
        self._automaton = ahocorasick.Automaton() if keys else None
        if self._automaton is not None:
            for key, index in keys.items():
                self._automaton.add_word(key, (index, len(key)))
            self._automaton.make_automaton()

    def find(self, text: str) -> Iterator[tuple[int, int, int]]:
        """(term index, start, end) of every occurrence of a key in `text`, overlapping ones included."""
        if self._automaton is None:
            return
        for last, (index, length) in self._automaton.iter(text):
            yield int(index), int(last) - int(length) + 1, int(last) + 1


def _prefer(keys: dict[str, int], key: str, index: int, blocks: Sequence[bool]) -> None:
    """Two terms normalising to the same key: a 'block' term wins over a 'strip' one, then the first."""
    if key not in keys or (blocks[index] and not blocks[keys[key]]):
        keys[key] = index


@dataclass(frozen=True)
class _Hit:
    term: int
    start: int  # span in the original text
    end: int


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


@dataclass(frozen=True)
class FieldsResult:
    """`TermFilter.check_fields`: `blocked_term` found in the field `blocked_field` refuses the request;
    otherwise `values` are the fields to use, with `stripped_terms` removed from the strippable ones."""

    blocked_term: str | None
    blocked_field: str | None
    values: Mapping[str, str]
    stripped_terms: tuple[str, ...] = ()

    @property
    def blocked(self) -> bool:
        return self.blocked_term is not None


class TermFilter:
    """One server's blocked terms compiled into two Aho–Corasick automata over normalised text."""

    def __init__(self, terms: Iterable[tuple[str, str]]) -> None:
        self._terms: list[tuple[str, str]] = []
        compiled: list[tuple[list[str], str | None]] = []
        for term, action in terms:
            term_keys = _term_keys(term)
            if term_keys is None:
                log.warning("filter term %r has nothing to match after normalisation; skipped", term)
                continue
            self._terms.append((term, action))
            compiled.append(term_keys)
        blocks = [action == "block" for _, action in self._terms]
        word_keys: dict[str, int] = {}
        letter_keys: dict[str, int] = {}
        for index, (keys, letters) in enumerate(compiled):
            for key in keys:
                _prefer(word_keys, key, index, blocks)
            if letters is not None:
                _prefer(letter_keys, letters, index, blocks)
        self._word_automaton = _Automaton(word_keys)
        self._letter_automaton = _Automaton(letter_keys)

    def __len__(self) -> int:
        return len(self._terms)

    def _hits(self, text: str) -> tuple[list[_Hit], bool]:
        """Term occurrences in any reading of `text`, earliest first (the longest first where two start), and
        whether that is all of them: a reading yields at most as many as it has characters, since more can only
        come from terms made to overlap one another, and counting those would cost time per term."""
        norm = normalise(text)
        found: set[_Hit] = set()
        complete = True
        for reading in _readings(norm.text):
            for count, (index, start, end) in enumerate(self._scan(reading)):
                if count == len(reading):
                    complete = False
                    break
                found.add(_Hit(index, *norm.original_span(start, end)))
        return sorted(found, key=lambda hit: (hit.start, -hit.end, hit.term)), complete

    def _scan(self, reading: str) -> Iterator[tuple[int, int, int]]:
        """(term index, start, end in `reading`) of whole-word and spelled-out matches."""
        words = _words(reading)
        starts = list(itertools.accumulate((len(w) + 1 for _, _, w in words[:-1]), initial=1))
        compact = " " + " ".join(w for _, _, w in words) + " "
        for index, key_start, key_end in self._word_automaton.find(compact):
            first = bisect.bisect_right(starts, key_start)  # the key's leading space is just before its first word
            last = bisect.bisect_right(starts, key_end - 1 - (compact[key_end - 1] == " ")) - 1
            yield index, words[first][0], words[last][1]
        owners: list[int] = []  # for each character of `spelled`, its word (-1 between runs)
        for single, run in itertools.groupby(range(len(words)), key=lambda i: len(words[i][2]) == 1):
            members = list(run)
            if single and len(members) >= 2:
                owners.extend([*members, -1])
        spelled = "".join(words[i][2] if i >= 0 else " " for i in owners)
        for index, key_start, key_end in self._letter_automaton.find(spelled):
            yield index, words[owners[key_start]][0], words[owners[key_end - 1]][1]

    def _first(self, hits: Sequence[_Hit], action: str | None = None) -> str | None:
        """The term of the earliest hit (of `action`, if given), as the moderator wrote it."""
        return next((self._terms[h.term][0] for h in hits if action in (None, self._terms[h.term][1])), None)

    def check(self, prompt: str) -> FilterResult:
        """Block if any 'block' term appears; otherwise remove every 'strip' term from the original text and
        check the result once more (refusing it if it still holds a term)."""
        hits, complete = self._hits(prompt)
        blocked = self._first(hits, "block") or (None if complete else self._first(hits))
        if blocked is not None or not hits:
            return FilterResult(blocked, prompt, ())
        stripped = _remove(prompt, _merge((h.start, h.end) for h in hits))
        again = self._first(self._hits(stripped)[0])
        if again is not None:
            return FilterResult(again, prompt, ())
        return FilterResult(None, stripped, tuple(dict.fromkeys(self._terms[h.term][0] for h in hits)))

    def check_fields(self, fields: Mapping[str, str], *, strippable: Collection[str] = ("prompt",)) -> FieldsResult:
        """Check several named free-text fields (prompt, LoRA name, …) and say which one held a term.

        'strip' terms are removed from the `strippable` fields; anywhere else (an identifier such as a LoRA name
        cannot be edited without changing what it names) any term refuses the request.
        """
        values: dict[str, str] = {}
        stripped: list[str] = []
        for name, value in fields.items():
            if name in strippable:
                result = self.check(value)
                term, values[name] = result.blocked_term, result.stripped_prompt
                stripped.extend(result.stripped_terms)
            else:
                term, values[name] = self._first(self._hits(value)[0]), value
            if term is not None:
                return FieldsResult(term, name, dict(fields))
        return FieldsResult(None, None, values, tuple(dict.fromkeys(stripped)))


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted spans with overlapping and touching ones joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


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


def operator_filter(rules: OperatorRules) -> TermFilter:
    """The operator's `BLOCKED_TERMS_FILE` terms, applied in every server and DM before the server's own."""
    return compile_filter(rules.blocked_terms)


async def guild_filter(storage: Storage, guild_id: int) -> TermFilter:
    terms = await storage.blocked_terms(guild_id)
    return compile_filter(tuple((t.term, t.action) for t in terms))


def blocked_notice(user_id: int, channel_id: int, term: str, field: str = "prompt") -> str:
    """The log-channel notice for a refused request: who, where, and which term.

    The prompt itself is never quoted: it may be the very abuse the term stands for, and the log channel can be
    read by more people than the member wrote it for. The term is the moderators' own words.
    """
    return (f"Refused a request from <@{user_id}> in <#{channel_id}>: its {field} contains the filtered term "
            f"“{term}”.")


def share_refusal(record: JobRecord, *, spoilered: bool, gallery_is_nsfw: bool) -> str | None:
    """Why a result may not be posted to the gallery, or None. A result made in an age-restricted channel (made
    under its looser safety level) or holding a flagged or spoilered image goes only to an age-restricted
    gallery: sharing must not move it in front of members who never opted in."""
    if gallery_is_nsfw:
        return None
    if record.channel_nsfw:
        why = "was made in an age-restricted channel"
    elif spoilered or any(output.flagged for output in record.outputs):
        why = "holds an image flagged as sensitive"
    else:
        return None
    return (f"This result {why}, so it can only be shared to an age-restricted gallery, and this server's gallery "
            "channel is not one. Nothing was shared.")


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
    rules: OperatorRules = DEFAULT_RULES,
    user_everywhere_today: Sequence[float] = (),
    user_waiting: int = 0,
    guild_waiting: int = 0,
    in_dm: bool = False,
) -> LimitDecision:
    """Decide whether a person may start a job now (`in_dm`: a direct message, under the declared defaults).

    `user_recent_job_times`: creation times of their recent jobs (for the cooldown); `user_active`: their queued
    or running jobs; `user_today`/`guild_today`: creation times of jobs counting toward the server's quotas;
    `user_everywhere_today`: the same for the operator's quota over every server and DM; `user_waiting`/
    `guild_waiting`: jobs not yet sent to a provider, for the operator's queue caps. When several limits apply, the
    one that lasts longest is reported, since retrying before it ends is pointless.
    """
    refusals: list[LimitDecision] = []
    if user_active >= settings.max_concurrent_per_user:
        where = "direct messages allow" if in_dm else "this server allows"
        refusals.append(LimitDecision(
            False,
            f"You already have {_jobs(user_active)} running; {where} "
            f"{settings.max_concurrent_per_user} at a time. Try again when one finishes.",
        ))
    waiting = (
        (user_waiting, rules.max_queued_per_member, "You already have", "for one person"),
        (guild_waiting, rules.max_queued_per_server, "This server already has", "for one server"),
    )
    for count, cap, who, per in waiting:
        if cap and count >= cap:
            refusals.append(LimitDecision(
                False,
                f"{who} {_jobs(count)} waiting to start; the bot holds at most {cap} waiting {per}. "
                "Try again when one has started.",
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
        (user_everywhere_today, rules.member_daily_quota,
         f"You have used your {_jobs(rules.member_daily_quota)} for the last 24 hours (the bot's limit per "
         "person over every server and DM)"),
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
    storage: Storage, settings: GuildSettings, user_id: int, guild_id: int | None, now: float,
    rules: OperatorRules = DEFAULT_RULES,
) -> LimitDecision:
    """Read the counts `check_limits` needs and decide. Cooldown and the server's quotas count jobs in this server
    (`guild_id` None, a DM: anywhere); concurrency, the operator's quota and the member's queue cap count the
    person's jobs everywhere.

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
    everywhere: list[float] = []
    if rules.member_daily_quota:
        everywhere = await storage.job_times(user_id=user_id, since=since)
    user_waiting = await storage.waiting_jobs(user_id=user_id) if rules.max_queued_per_member else 0
    guild_waiting = 0
    if rules.max_queued_per_server and guild_id is not None:
        guild_waiting = await storage.waiting_jobs(guild_id=guild_id)
    return check_limits(
        settings,
        user_recent_job_times=recent,
        user_active=await storage.active_jobs(user_id),
        user_today=user_today,
        guild_today=guild_today,
        now=now,
        rules=rules,
        user_everywhere_today=everywhere,
        user_waiting=user_waiting,
        guild_waiting=guild_waiting,
        in_dm=guild_id is None,
    )


class LimitGate:
    """Serialises admission per person (and per server when it has a daily quota or the operator caps its waiting
    jobs), in this process and across every process on the database (`Storage.serialized`), so limits hold when
    many commands arrive at once, on any shard.

    Usage::

        async with gate.admission(settings, user_id, guild_id) as decision:
            if decision.allowed:
                await storage.create_job(...)  # still inside the lock: the next caller sees this job
    """

    def __init__(
        self, storage: Storage, *, rules: OperatorRules = DEFAULT_RULES, clock: Callable[[], float] = time.time
    ) -> None:
        self._storage = storage
        self._rules = rules
        self._clock = clock

    @contextlib.asynccontextmanager
    async def admission(
        self, settings: GuildSettings, user_id: int, guild_id: int | None
    ) -> AsyncIterator[LimitDecision]:
        # Only server-wide limits (its daily quota, the operator's cap on its waiting jobs) need the server lock:
        # cooldown, concurrency, personal quotas and caps count one person's jobs, under the person's lock.
        keys = [f"admit:user:{user_id}"]
        if guild_id is not None and (settings.daily_quota_per_guild > 0 or self._rules.max_queued_per_server > 0):
            keys.append(f"admit:guild:{guild_id}")
        async with self._storage.serialized(keys):
            yield await admit(self._storage, settings, user_id, guild_id, self._clock(), self._rules)
