import json

import pytest

from newsmon.errors import RecordError
from newsmon.record import Article, TagHit, article_id


def _article(**kw) -> Article:
    base = dict(id=article_id("https://example.org/a"), url="https://example.org/a?utm_source=x",
                canonical_url="https://example.org/a", feed_url="https://example.org/feed")
    base.update(kw)
    return Article(**base)


def test_round_trip_keeps_every_field():
    article = _article(title="Titre", authors=["A", "B"], text="é" * 3, language="fr", language_confidence=0.99,
                       tags=[TagHit("nato", {"OTAN": 2}, [(0, 4), (10, 14)])],
                       provenance=[{"stage": "extract", "ms": 1.5}])
    again = Article.from_json(article.to_json())
    assert again == article
    assert again.tags[0].count == 2


def test_unknown_fields_from_newer_versions_survive():
    data = json.loads(_article().to_json())
    data["sentiment"] = {"score": 0.3}
    data["schema_version"] = 2
    again = Article.from_json(json.dumps(data).encode())
    assert again.extra == {"sentiment": {"score": 0.3}}
    assert json.loads(again.to_json())["sentiment"] == {"score": 0.3}


def test_id_is_a_stable_hash_of_the_canonical_url():
    # The same value on every machine, run and version: stored ids and Kafka keys depend on it.
    assert article_id("https://example.org/a") == "b5b10dd0429e69ac7cfaf0a20b6901c1"  # sha256, first 128 bits
    assert article_id("https://example.org/a") != article_id("https://example.org/A")


@pytest.mark.parametrize("raw, reason", [
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not an object"),
    (b'{"id": "x"}', "required field"),
    (b'{"id":"x","url":"u","canonical_url":"c","feed_url":"f","tags":[{"nope":1}]}', "malformed tags"),
    (b'{"id":"x","url":"u","canonical_url":"c","feed_url":"f","text":1}', "field 'text' has type int"),
    (b'{"id":"x","url":"u","canonical_url":"c","feed_url":"f","authors":"A"}', "field 'authors' has type str"),
])
def test_invalid_records_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(RecordError, match=reason):
        Article.from_json(raw)
