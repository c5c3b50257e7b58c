"""Near-duplicate stories: one story republished under several URLs (a wire copy re-edited,
re-headlined or trimmed) is recognised by its text.

Each article gets a bottom-k MinHash sketch of its folded word 3-shingles; an article whose
estimated resemblance to one seen within the window is at least 0.4 joins that article's
story, else it starts its own (the story id is its first article's id). Sketches live in the
caller's SQLite database, in the caller's transaction, so a story is assigned exactly when
the article is recorded (an in-memory LSH library would be lost on restart). The alert log
uses this to alert a subscriber once per story, the search index to group results.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3

from newsmon.record import Article
from newsmon.text import fold

SKETCH_SIZE = 64
STORY_WINDOW_DAYS = 7.0  # the search index: a copy indexed within this many days of the first joins its story
SAME_STORY = 0.4  # estimated resemblance from which two texts are one story (demo data: different stories ≤ 0.0,
#                   trimmed or re-headlined copies ≥ 0.48)
_WORD = re.compile(r"\w+")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sketches (
    article_id TEXT PRIMARY KEY,
    story TEXT NOT NULL,
    sketch TEXT NOT NULL,               -- JSON: the k smallest 63-bit shingle hashes
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sketch_values (value INTEGER NOT NULL, article_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sketch_values_value ON sketch_values (value);
"""


def sketch(text: str, k: int = SKETCH_SIZE) -> list[int]:
    """Bottom-k MinHash: the k smallest hashes of the folded text's word 3-shingles."""
    words = _WORD.findall(fold(text).text)
    shingles = {" ".join(words[i:i + 3]) for i in range(max(1, len(words) - 2))}
    # 63 bits: SQLite integers are signed 64-bit.
    hashes = {int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") >> 1 for s in shingles}
    return sorted(hashes)[:k]


def resemblance(a: list[int], b: list[int], k: int = SKETCH_SIZE) -> float:
    """Estimated Jaccard similarity of the two shingle sets (Broder's bottom-k estimator)."""
    union = sorted(set(a) | set(b))[:k]
    both = set(a) & set(b)
    return sum(1 for h in union if h in both) / len(union) if union else 0.0


class StoryIndex:
    """The sketches of recent articles, in the tables ``sketches`` and ``sketch_values`` of ``db``."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db
        db.executescript(_SCHEMA)

    def story_of(self, article: Article, now: float, since: float) -> str:
        """The story ``article`` belongs to: that of a near-identical article recorded since ``since``
        (epoch seconds), else its own id. Recorded at ``now``; the caller commits."""
        row = self._db.execute("SELECT story FROM sketches WHERE article_id = ?", (article.id,)).fetchone()
        if row:
            return row[0]  # a redelivery or re-fetch keeps its story
        mine = sketch(f"{article.title}\n{article.text}")
        story, best = article.id, SAME_STORY
        if mine:
            marks = ",".join("?" * len(mine))
            # Candidates share at least 4 of the 64 smallest hashes (below that the estimate cannot reach
            # 0.4); the closest few are compared, so a story copied a thousand times costs what one does.
            candidates = self._db.execute(
                f"SELECT s.story, s.sketch FROM sketches s JOIN (SELECT article_id, COUNT(*) AS shared"
                f" FROM sketch_values WHERE value IN ({marks}) GROUP BY article_id) v USING (article_id)"
                f" WHERE s.created >= ? AND v.shared >= 4 ORDER BY v.shared DESC LIMIT 8", (*mine, since))
            for other_story, other in candidates:
                if (score := resemblance(mine, json.loads(other))) >= best:
                    story, best = other_story, score
        self._db.execute("INSERT INTO sketches VALUES (?, ?, ?, ?)", (article.id, story, json.dumps(mine), now))
        self._db.executemany("INSERT INTO sketch_values VALUES (?, ?)", [(v, article.id) for v in mine])
        return story

    def forget_before(self, before: float) -> None:
        """Drop sketches recorded before ``before``: older articles no longer attract new copies."""
        self._db.execute("DELETE FROM sketch_values WHERE article_id IN"
                         " (SELECT article_id FROM sketches WHERE created < ?)", (before,))
        self._db.execute("DELETE FROM sketches WHERE created < ?", (before,))
