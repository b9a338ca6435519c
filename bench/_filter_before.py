"""The blocked-term filter as it was before it became linear-time, kept only as the baseline that
`bench_filter.py` compares the current `bot.moderation.TermFilter` against (same inputs, same answers)."""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
