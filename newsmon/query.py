"""The analyst's query syntax, parsed once here and translated by each search backend
(``sinks.sqlite_index`` to FTS5, ``sinks.elasticsearch`` to the query DSL).

Syntax: words (all must match), ``"exact phrases"``, ``a OR b``, ``-excluded``
(word or phrase), ``prefix*``. Anything else is literal text: a query can never
inject backend syntax, and every input parses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(r'(-?)"([^"]*)"?(\*?)|(\S+)')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Term:
    text: str
    phrase: bool = False
    prefix: bool = False


@dataclass
class Query:
    groups: list[list[Term]] = field(default_factory=list)  # AND of OR-groups
    excluded: list[Term] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.groups and not self.excluded


def _has_word(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def parse(query: str) -> Query:
    result = Query()
    pending_or = False
    query = _CONTROL.sub(" ", query or "")  # a NUL would end the backend's string early; no control char is a word
    for match in _TOKEN.finditer(query):
        neg, phrase, star, bare = match.groups()
        if bare is not None:
            if bare == "OR":
                pending_or = bool(result.groups)
                continue
            neg = "-" if bare.startswith("-") and len(bare) > 1 else ""
            word = bare[1:] if neg else bare
            star = "*" if word.endswith("*") else ""
            term = Term(word.rstrip("*"), phrase=False, prefix=bool(star))
        else:
            term = Term(phrase, phrase=True, prefix=bool(star))
        if not _has_word(term.text):
            continue  # punctuation only: nothing a text index can match
        if neg:
            result.excluded.append(term)
        elif pending_or:
            result.groups[-1].append(term)
        else:
            result.groups.append([term])
        pending_or = False
    return result
