"""Alert rules: which subscribers' rules a tagged article matches, and why.

A rule matches when every part it gives matches: one of its topic tags, its query
(the analyst's syntax of ``newsmon/query.py``: words, "phrases", OR, -exclusions,
prefix*; case and accents ignored), its language and source filters, and at
least ``min_hits`` keyword occurrences.

Rules are indexed by what an article must contain for them to match (a word or
prefix of one of the query's required groups, else one of the rule's tags with its
languages), so an article is checked only against the rules it could match: the
cost follows the article's words, not the number of subscribers.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from newsmon.query import Term, parse
from newsmon.record import Article
from newsmon.settings import Rule, Subscriber
from newsmon.text import MARK_CLOSE, MARK_OPEN, fold

_WORD = re.compile(r"\w+")
_PREFIX_KEY = 3  # prefix* terms are indexed by their first characters


@dataclass(frozen=True)
class Match:
    subscriber: str
    rule_id: str
    terms: list[str]  # the keywords and query terms that matched, as the rule wrote them
    hits: int  # keyword occurrences that matched


@dataclass(frozen=True)
class _Term:
    text: str  # as the rule wrote it, for the explanation
    words: tuple[str, ...]  # folded like the article's words
    prefix: bool

    @classmethod
    def of(cls, term: Term) -> _Term:
        return cls(term.text + ("*" if term.prefix else ""), tuple(_WORD.findall(fold(term.text).text)), term.prefix)


@dataclass(frozen=True)
class _Compiled:
    subscriber: str
    rule: Rule
    groups: tuple[tuple[_Term, ...], ...]  # all groups must match; any term of a group
    excluded: tuple[_Term, ...]
    sources: frozenset[str]


class _Words:
    """An article's title and text, folded like the tagger folds them, ready for term lookups."""

    def __init__(self, article: Article):
        tokens = _WORD.findall(fold(f"{article.title}\n{article.text}").text)
        self.counts = Counter(tokens)
        self.sorted = sorted(self.counts)
        self.joined = " " + " ".join(tokens) + " "

    @property
    def unique(self) -> Iterable[str]:
        return self.counts.keys()

    def count(self, term: _Term) -> int:
        if not term.words:
            return 0
        if len(term.words) > 1:  # a phrase (or a word the folding splits, like e-mail)
            return self.joined.count(" " + " ".join(term.words) + ("" if term.prefix else " "))
        word = term.words[0]
        if not term.prefix:
            return self.counts.get(word, 0)
        start = bisect_left(self.sorted, word)
        end = bisect_left(self.sorted, word + "\U0010ffff")
        return sum(self.counts[w] for w in self.sorted[start:end])


def _index_keys(compiled: _Compiled) -> list[tuple]:
    """Keys under which an article that can match this rule is sure to look: the words of one
    required query group (words are more selective than topics), else its tags (with its
    languages), else "any"."""
    rule = compiled.rule
    keys = []
    for term in min(compiled.groups, key=len, default=()):  # any term of a required group must be there
        if not term.words or (term.prefix and len(term.words) == 1 and len(term.words[0]) < _PREFIX_KEY):
            keys = []
            break
        if term.prefix and len(term.words) == 1:
            keys.append(("prefix", term.words[0][:_PREFIX_KEY]))
        else:
            keys.append(("word", term.words[0]))
    if keys:
        return keys
    if rule.tags and rule.languages:
        return [("tag", tag, language) for tag in rule.tags for language in rule.languages]
    if rule.tags:
        return [("tag", tag) for tag in rule.tags]
    return [("any",)]  # exclusions only, or prefixes too short to index: every article is a candidate


class RuleIndex:
    """Every subscriber's rules, indexed by the tags and words they need."""

    def __init__(self, subscribers: Iterable[Subscriber]):
        self._by_key: dict[tuple, list[_Compiled]] = defaultdict(list)
        self.rule_count = 0
        for subscriber in subscribers:
            for rule in subscriber.rules:
                query = parse(rule.query)
                compiled = _Compiled(subscriber.name, rule, tuple(tuple(map(_Term.of, g)) for g in query.groups),
                                     tuple(map(_Term.of, query.excluded)), frozenset(s.casefold() for s in rule.sources))
                for key in _index_keys(compiled):
                    self._by_key[key].append(compiled)
                self.rule_count += 1

    def candidates(self, article: Article, words: _Words | None = None) -> list[_Compiled]:
        """The rules this article could match (its tags and words are what they need); the others are
        never evaluated."""
        words = words or _Words(article)
        keys: list[tuple] = [("any",)]
        keys += [k for tag in article.tag_names for k in (("tag", tag), ("tag", tag, article.language))]
        keys += [("word", w) for w in words.unique]
        keys += [("prefix", w[:_PREFIX_KEY]) for w in words.unique if len(w) >= _PREFIX_KEY]
        seen: dict[int, _Compiled] = {}
        for key in keys:
            for compiled in self._by_key.get(key, ()):
                seen[id(compiled)] = compiled
        return list(seen.values())

    def match(self, article: Article) -> list[Match]:
        """The rules this article matches; per subscriber, the first matching rule only."""
        if not self.rule_count:
            return []
        words = _Words(article)
        matches: dict[str, Match] = {}
        for compiled in self.candidates(article, words):
            if compiled.subscriber in matches:
                continue
            found = _evaluate(compiled, article, words)
            if found:
                matches[compiled.subscriber] = found
        return list(matches.values())


def _evaluate(compiled: _Compiled, article: Article, words: _Words) -> Match | None:
    rule = compiled.rule
    if rule.languages and article.language not in rule.languages:
        return None
    if compiled.sources and article.source.casefold() not in compiled.sources:
        return None
    terms: list[str] = []
    hits = 0
    if rule.tags:
        tagged = [hit for hit in article.tags if hit.topic in rule.tags]
        if not tagged:
            return None
        for hit in tagged:
            terms += [t for t in hit.terms if t not in terms]
            hits += sum(hit.terms.values())
    for group in compiled.groups:
        counts = [(term, words.count(term)) for term in group]
        if not any(n for _, n in counts):
            return None
        for term, n in counts:
            if n:
                terms.append(term.text)
                hits += n
    if any(words.count(term) for term in compiled.excluded):
        return None
    if hits < rule.min_hits and (rule.tags or compiled.groups):
        return None
    return Match(compiled.subscriber, rule.id, terms, hits)


def snippet(article: Article, terms: list[str], width: int = 90) -> str:
    """A stretch of the text around the first matched term, the term marked with MARK_OPEN/MARK_CLOSE."""
    text = article.text or article.title
    folded = fold(text)
    best = None  # (start, end, prefix) in the folded text
    for term in terms:
        prefix = term.endswith("*")
        needle = fold(term.rstrip("*")).text.strip()
        for found in re.finditer(re.escape(needle), folded.text) if needle else ():
            start, end = found.span()
            before_ok = start == 0 or not folded.text[start - 1].isalnum()
            after_ok = prefix or end == len(folded.text) or not folded.text[end].isalnum()
            if before_ok and after_ok:
                if best is None or start < best[0]:
                    best = (start, end, prefix)
                break
    if best is None:
        return " ".join(text[: 2 * width].split())
    start, end = folded.source_pos(best[0]), folded.source_pos(best[1])
    if best[2]:  # a prefix: mark the whole word
        end += re.match(r"\w*", text[end:]).end()
    left = max(0, start - width)
    right = min(len(text), end + width)
    marked = text[left:start] + MARK_OPEN + text[start:end] + MARK_CLOSE + text[end:right]
    return ("…" if left else "") + " ".join(marked.split()) + ("…" if right < len(text) else "")
