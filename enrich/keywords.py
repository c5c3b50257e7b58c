"""Keyword tagging: topics of keywords and phrases, matched with one Aho-Corasick automaton.

Text and keywords are folded the same way (``newsmon.text.fold``) so matching is
case- and accent-insensitive and phrases match across line breaks. The
automaton finds substrings; whole-word matching is enforced here by checking the
characters on either side. Positions are reported in the original text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import ahocorasick

from newsmon.record import Article, TagHit
from newsmon.settings import Topic
from newsmon.text import fold


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
