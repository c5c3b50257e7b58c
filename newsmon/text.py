"""Text helpers every stage shares: folding for matching, and the markers of highlighted matches.

``fold`` is how the tagger, the alert rules, the story sketches and the search highlights
compare text: NFKC, case fold, accents removed, typographic apostrophes unified, whitespace
runs collapsed, so matching is case- and accent-insensitive and phrases match across line
breaks; positions in the folded text map back to the original.

Snippets carry two private-use characters around what matched (``MARK_OPEN``/``MARK_CLOSE``):
they cannot occur in extracted text that matters, and each output turns them into its own
form (``<mark>`` in HTML, bold on a terminal, ``*`` in Slack).
"""

from __future__ import annotations

import html
import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache

MARK_OPEN, MARK_CLOSE = "\ue000", "\ue001"


def marked(snippet: str, open_: str, close: str) -> str:
    """The snippet with its match markers replaced by ``open_`` and ``close``."""
    return snippet.replace(MARK_OPEN, open_).replace(MARK_CLOSE, close)


def snippet_html(snippet: str | None) -> str:
    """A snippet as escaped HTML with <mark> around the matches: article text never becomes markup."""
    return marked(html.escape(str(snippet or "")), "<mark>", "</mark>")


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
