"""Keyword tagging: topics of keywords and phrases, matched with one Aho-Corasick automaton.

Text and keywords are folded the same way (NFKC, case fold, accents removed,
typographic apostrophes unified, whitespace runs collapsed) so matching is
case- and accent-insensitive and phrases match across line breaks. The
automaton finds substrings; whole-word matching is enforced here by checking the
characters on either side. Positions are reported in the original text.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache

import ahocorasick

from newsmon.record import Article, TagHit
from newsmon.settings import Topic

_PUNCTUATION = {"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2010": "-", "\u2011": "-"}
_SPACE_RUNS = re.compile(" {2,}")


@lru_cache(maxsize=65536)
def _fold_char(ch: str) -> str:
    if ch.isspace():
        return " "
    decomposed = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", ch).casefold())
    folded = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(_PUNCTUATION.get(c, c) for c in folded)


class _OffsetMap:
    """Maps positions in a string derived by local edits back to the source string.

    Built from anchors (position in derived string, source minus derived offset), each valid
    from its position up to the next anchor.
    """

    def __init__(self) -> None:
        self.positions: list[int] = [0]
        self.deltas: list[int] = [0]

    def add(self, derived_pos: int, delta: int) -> None:
        self.positions.append(derived_pos)
        self.deltas.append(delta)

    def __call__(self, derived_pos: int) -> int:
        return derived_pos + self.deltas[bisect_right(self.positions, derived_pos) - 1]


@dataclass(frozen=True)
class Folded:
    text: str
    _to_translated: _OffsetMap
    _to_source: _OffsetMap

    def source_pos(self, pos: int) -> int:
        return self._to_source(self._to_translated(pos))


def fold(text: str) -> Folded:
    """Fold ``text`` for matching, remembering how to map positions back."""
    table = {ord(ch): _fold_char(ch) for ch in set(text)}
    translated = text.translate(table)
    to_source = _OffsetMap()
    resized = {chr(o) for o, s in table.items() if len(s) != 1}
    if resized:  # rare: ß -> ss, ligatures, lone combining marks; walk only those characters
        delta = 0  # source position minus translated position
        for match in re.finditer("|".join(map(re.escape, resized)), text):
            delta -= len(table[ord(match.group())]) - 1
            to_source.add(match.start() + 1 - delta, delta)  # first translated position after it
    to_translated = _OffsetMap()
    if "  " in translated:
        removed, pieces, last = 0, [], 0
        for run in _SPACE_RUNS.finditer(translated):
            pieces.append(translated[last : run.start() + 1])  # keep one space of the run
            anchor = run.start() + 1 - removed
            removed += len(run.group()) - 1
            to_translated.add(anchor, removed)
            last = run.end()
        pieces.append(translated[last:])
        translated = "".join(pieces)
    return Folded(translated, to_translated, to_source)


def _fold_keyword(keyword: str) -> str:
    return fold(keyword).text.strip()


@dataclass(frozen=True)
class _Entry:
    topic: str
    keyword: str
    language: str | None
    length: int
    edge_word_chars: tuple[bool, bool]


class KeywordTagger:
    """Tags text with topics. Matching cost depends on the text, not on how many keywords there are."""

    def __init__(self, topics: Mapping[str, Topic]):
        self._automaton = ahocorasick.Automaton()
        entries: dict[str, list[_Entry]] = {}
        for name, topic in topics.items():
            per_language = [(None, kw) for kw in topic.keywords]
            per_language += [(lang, kw) for lang, kws in topic.languages.items() for kw in kws]
            for language, keyword in per_language:
                key = _fold_keyword(keyword)
                if not key:
                    continue
                entry = _Entry(name, keyword, language, len(key), (key[0].isalnum(), key[-1].isalnum()))
                entries.setdefault(key, []).append(entry)
        for key, value in entries.items():
            self._automaton.add_word(key, value)
        self.keyword_count = sum(len(v) for v in entries.values())
        if entries:
            self._automaton.make_automaton()

    def find(self, text: str, language: str | None = None) -> dict[str, list[tuple[str, int, int]]]:
        """topic -> [(keyword, start, end)] in ``text``, whole words only, longest match kept."""
        if not self.keyword_count or not text:
            return {}
        folded = fold(text)
        haystack = folded.text
        found: dict[str, list[tuple[str, int, int]]] = {}
        for last, entries in self._automaton.iter(haystack):
            end = last + 1
            for entry in entries:
                start = end - entry.length
                if entry.language and entry.language != language:
                    continue
                if entry.edge_word_chars[0] and start > 0 and haystack[start - 1].isalnum():
                    continue
                if entry.edge_word_chars[1] and end < len(haystack) and haystack[end].isalnum():
                    continue
                found.setdefault(entry.topic, []).append((entry.keyword, start, end))
        result = {}
        for topic, hits in found.items():
            kept: list[tuple[str, int, int]] = []
            for keyword, start, end in sorted(hits, key=lambda h: (h[1], -h[2])):
                if kept and start < kept[-1][2]:  # inside (or overlapping) a longer match already kept
                    continue
                kept.append((keyword, start, end))
            result[topic] = [(kw, folded.source_pos(s), folded.source_pos(e)) for kw, s, e in kept]
        return result

    def tag(self, article: Article) -> Article:
        """Stage: set ``tags`` from title and text (positions are offsets into ``text``)."""
        in_title = self.find(article.title, article.language)
        in_text = self.find(article.text, article.language)
        hits = []
        for topic in sorted(set(in_title) | set(in_text)):
            terms: dict[str, int] = {}
            for keyword, _, _ in in_title.get(topic, []) + in_text.get(topic, []):
                terms[keyword] = terms.get(keyword, 0) + 1
            hits.append(TagHit(topic, terms, [(s, e) for _, s, e in in_text.get(topic, [])]))
        return replace(article, tags=hits)
