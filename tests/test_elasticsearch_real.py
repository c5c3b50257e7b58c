"""The search index straight on the real node: the template and its analyzers, search, stories, the API.

The node is the OpenSearch one `make engines` starts (the ``es_url`` fixture), or $ES_URL, a cluster of
your own (Elasticsearch 8/9 or OpenSearch 2/3):

    ES_URL=https://es:9200 NEWSMON_ES_API_KEY=… ES_CA_FILE=ca.pem .venv/bin/python -m pytest tests/test_elasticsearch_real.py

Each test writes under its own index prefix and deletes its template and indices after. Faults the
node does not produce on demand are in tests/test_elasticsearch.py, through tests/support/es_proxy.py.
"""

from __future__ import annotations

import csv
import io
import json

import pytest

from newsmon.app.stages import open_index
from newsmon.query import parse
from newsmon.record import Article, article_id
from newsmon.search import Filters
from newsmon.text import MARK_CLOSE, MARK_OPEN
from sinks.elasticsearch import LANGUAGE_ANALYZERS, EsIndex, index_for, search_body, to_document
from tests.support.search_cluster import call, es_settings, news_article, refresh, stored

# One sentence per mapped language, with its inflections and stop words: each language's analyzer must
# change it (stem a word or drop one) where the standard analyzer would not.
SAMPLES = {
    "ar": "الكتب في البيوت", "bg": "книгите и масите", "ca": "els llibres de les cases", "cs": "knihy a stoly",
    "da": "bøgerne og husene", "de": "die Häuser und Straßen", "el": "τα βιβλία και τα σπίτια",
    "en": "the councils approved budgets", "es": "las ciudades y los pueblos", "fi": "talot ja kadut",
    "fr": "les alliés promettent une aide", "hu": "a házak és az utcák", "id": "rumah-rumah dan jalanan",
    "it": "le città e i paesi", "lv": "mājas un ielas", "nl": "de huizen en straten", "no": "husene og gatene",
    "pt": "as cidades e os povos", "ro": "casele și străzile orașelor", "ru": "дома и улицы",
    "sv": "husen och gatorna", "tr": "evler ve sokaklar",
}


@pytest.fixture
def index(es_url, es_prefix, tmp_path):
    """The sink and search backend on the node, template installed, under the test's own prefix."""
    opened = EsIndex(es_settings(es_url, index_prefix=es_prefix), stories=tmp_path / "stories.db").connect()
    yield opened
    opened.close()


def _refreshed(index: EsIndex) -> EsIndex:
    """Make what was just written searchable now rather than within the refresh interval."""
    refresh(index.settings.url, index.prefix)
    return index


def _tokens(index: EsIndex, target: str, **analysis) -> list[str]:
    return [t["token"] for t in call(index.settings.url, "POST", f"{target}/_analyze", json=analysis)["tokens"]]


def test_the_template_s_analyzers_on_the_node(index):
    """Every language analyzer the template maps, and the folding one, as the node runs them."""
    assert set(SAMPLES) == set(LANGUAGE_ANALYZERS)
    monthly = f"/{index.prefix}-2026.02"
    call(index.settings.url, "PUT", monthly)  # an index created from the template
    for lang, text in SAMPLES.items():
        mapped = _tokens(index, monthly, field=f"text_{lang}", text=text)
        assert mapped == _tokens(index, "", analyzer=LANGUAGE_ANALYZERS[lang], text=text), lang
        assert mapped and mapped != _tokens(index, "", analyzer="standard", text=text), (lang, mapped)
    assert _tokens(index, monthly, field="text_fr", text="Les alliés promettent") == ["alie", "prometent"]
    assert _tokens(index, monthly, field="text_en", text="The councils approved") == ["council", "approv"]
    assert _tokens(index, monthly, field="text_de", text="die Häuser") == ["haus"]
    assert _tokens(index, monthly, field="text", text="Sécurité À Ærøskøbing") == ["securite", "a", "aeroskobing"]
    assert _tokens(index, monthly, field="title", text="ÉTÉ") == ["ete"]


def test_reindexing_updates_never_duplicates(index):
    assert index.write([news_article(n) for n in range(3)]) == []
    again = [news_article(n, text="Updated: the council met again.") for n in range(3)]
    for article in again:
        article.fetched = "2026-07-09T10:00:00Z"  # re-fetched months later: same index, decided by the article
    assert index.write(again) == []
    _refreshed(index)
    hits = index.search("council", limit=10).hits
    assert sorted(h.article.id for h in hits) == sorted(a.id for a in again)
    assert all(h.article.text.startswith("Updated") for h in hits)
    assert index.count() == 3


def test_search_backend_features(index):
    index.write([
        news_article(1, language="fr", title="La sécurité de l'Europe", text="Les alliés parlent de sécurité et de défense.",
                 tags=["nato"], published="2026-02-12T16:45:00Z"),
        news_article(2, language="en", title="Harbour budget", text="The councils approved the harbour budgets.",
                 published="2026-02-10T09:00:00Z"),
        news_article(3, language="en", title="Security talks", text="Security talks in Brussels: NATO allies meet.",
                 tags=["nato"], published="2026-01-05T09:00:00Z"),
        news_article(4, language="de", title="Klimaschutz", text="Der Rat beschließt das Wärmenetz für den Klimaschutz.",
                 tags=["climate"], published="2026-02-01T09:00:00Z"),
    ])
    _refreshed(index)
    # Accent folding: securite finds sécurité, with the match highlighted.
    result = index.search("securite")
    assert [h.article.id for h in result.hits] == [article_id("https://news.example.org/a1")]
    assert f"{MARK_OPEN}sécurité{MARK_CLOSE}" in result.hits[0].snippet
    # Stemming on the language fields: "allié" finds "alliés", "council budget" finds "councils ... budgets".
    assert [h.article.title for h in index.search("allié").hits] == ["La sécurité de l'Europe"]
    assert [h.article.title for h in index.search("council budget").hits] == ["Harbour budget"]
    # OR, phrases, exclusion, prefix.
    assert {h.article.title for h in index.search("securite OR security").hits} == {"La sécurité de l'Europe", "Security talks"}
    assert [h.article.title for h in index.search('"harbour budgets"').hits] == ["Harbour budget"]
    assert [h.article.title for h in index.search("councils -harbour").hits] == []
    assert [h.article.title for h in index.search("klima*").hits] == ["Klimaschutz"]
    # Filters, date range, sort by date, pagination, facets.
    assert [h.article.title for h in index.search("", Filters(tags=["nato"]), sort="date").hits] == [
        "La sécurité de l'Europe", "Security talks"]
    assert [h.article.title for h in index.search("", Filters(languages=["en"], since="2026-02-01T00:00:00Z")).hits] == [
        "Harbour budget"]
    page = index.search("", sort="date", limit=2, offset=2)
    assert page.total == 4 and [h.article.title for h in page.hits] == ["Klimaschutz", "Security talks"]
    assert page.facets["language"] == {"en": 2, "fr": 1, "de": 1}
    assert page.facets["tag"] == {"nato": 2, "climate": 1}
    # Records come back whole, tags included.
    hit = index.search("klimaschutz").hits[0].article
    assert hit.tags[0].topic == "climate" and hit.tags[0].terms == {"climate": 1}
    assert index.get(article_id("https://news.example.org/a4")).title == "Klimaschutz"


def test_query_syntax_cannot_inject(index):
    """Backend syntax in a query is plain text: the request carries only structured clauses."""
    index.write([news_article(1, text="The council met."), news_article(2, text="Budget cuts.")])
    _refreshed(index)
    assert index.search("council").total == 1  # the words themselves are found
    # Read as the analyst's words, each query matches nothing here; read as backend syntax, each would
    # match both articles (any field, match_all, council OR budget).
    for hostile in ['text:* OR _id:*', '{"match_all": {}}', "council) | (budget~2"]:
        assert index.search(hostile).total == 0, hostile
    # Punctuation alone has no words to match: it browses everything, like the empty query does.
    for punctuation in ["*", "+-|\\"]:
        assert search_body(parse(punctuation), Filters(), sort="relevance", limit=10, offset=0)["query"]["bool"]["must"] \
            == [{"match_all": {}}], punctuation
    body = search_body(parse("text:* OR _id:*"), Filters(), sort="relevance", limit=10, offset=0)
    assert "query_string" not in json.dumps(body)
    clauses = body["query"]["bool"]["must"][0]["bool"]["should"]
    # Analysed as text (a prefix of "text:"), never parsed as field syntax.
    assert [(c["multi_match"]["query"], c["multi_match"]["type"]) for c in clauses] \
        == [("text:", "phrase_prefix"), ("_id:", "phrase_prefix")]


def test_search_when_nothing_is_indexed_yet(es_url, es_prefix):
    reader = EsIndex(es_settings(es_url, index_prefix=es_prefix)).connect(install=False)
    assert reader.search("anything").total == 0
    reader.close()


# -- near-duplicate stories and the API ---------------------------------------------------------

STORY = ("The port authority of Ellis confirmed on Tuesday that three NATO frigates will dock next week "
         "to load equipment bound for Ukraine, the largest such shipment since the spring. Dock workers "
         "said the preparations began overnight and would continue through the weekend, with road closures "
         "around the northern quay. The mayor welcomed the visit and promised minimal disruption to ferries.")
TRIMMED_COPY = STORY.replace(" The mayor welcomed the visit and promised minimal disruption to ferries.", "")
OTHER_STORY = ("The city council approved a new cycling lane along the river on Monday after a long debate about "
               "parking spaces, trees and the cost of the works, which begin in April and last four months.")


def _story_articles(copy_published: str = "2026-02-12T10:00:00Z") -> tuple[Article, Article, Article]:
    """An original, its trimmed copy from another source, and a different story."""
    first = news_article(1, title="NATO frigates to dock at Ellis", text=STORY, published="2026-02-12T08:00:00Z",
                     tags=["harbour"])
    copy = news_article(2, title="Frigates due in Ellis port", text=TRIMMED_COPY, published=copy_published,
                    tags=["harbour"])
    other = news_article(3, title="Cycling lane approved", text=OTHER_STORY, published="2026-02-11T09:00:00Z",
                     tags=["harbour"])
    first.source, copy.source, other.source = "Ellis Post", "Wire", "Wire"
    return first, copy, other


def test_stories_collapse_with_their_copies_and_count_once(index, es_url, tmp_path):
    """collapse on story, the story's articles as inner hits, cardinality counts (total, facets, timeline)."""
    first, copy, other = _story_articles(copy_published="2026-02-13T07:00:00Z")
    assert index.write([first, copy, other]) == []
    assert {doc_id: doc["story"] for doc_id, doc in stored(es_url, index.prefix).items()} == {
        first.id: first.id, copy.id: first.id, other.id: other.id}
    _refreshed(index)
    result = index.search("frigates OR cycling")
    assert (result.total, result.articles, len(result.hits)) == (2, 3, 2)
    grouped = next(h for h in result.hits if h.story == first.id)
    others = {first.id, copy.id} - {grouped.article.id}
    assert [d["id"] for d in grouped.duplicates] == list(others)
    assert set(grouped.duplicates[0]) == {"id", "url", "title", "source", "language", "published"}
    assert next(h for h in result.hits if h.story == other.id).duplicates == []
    assert result.facets["source"] == {"Wire": 2, "Ellis Post": 1} and result.facets["tag"] == {"harbour": 2}
    # A story counts on each day it has an article (SQLite: on its first day only, see EsIndex.search).
    assert result.timeline == [("2026-02-11", 1), ("2026-02-12", 1), ("2026-02-13", 1)]
    assert index.search("cycling").timeline == [("2026-02-11", 1)]
    assert [d["id"] for d in index.search("mayor").hits[0].duplicates] == [copy.id]  # unmatched copies listed too
    assert index.story(copy.id) == (first.id, [{"id": first.id, "url": first.url, "title": first.title,
                                                "source": "Ellis Post", "language": "en",
                                                "published": first.published}])
    assert index.story(other.id) == (other.id, [])
    assert index.story("0" * 32) is None
    assert index.search("frigates", limit=1, offset=1).hits == []  # from/size over stories

    # The sketches outlive the process: a copy indexed after a restart still joins its story.
    again = EsIndex(es_settings(es_url, index_prefix=index.prefix), stories=tmp_path / "stories.db").connect()
    late = news_article(4, title="Ellis awaits NATO frigates", text=TRIMMED_COPY + " Ferries run as usual.")
    again.write([late])
    _refreshed(again)
    assert again.story(late.id)[0] == first.id
    assert again.search("frigates").total == 1
    again.close()


def test_documents_from_before_stories_are_backfilled(index):
    """Documents written without a story (an older newsmon) get the field mapped and set to their own id."""
    old = [news_article(n, text=f"Harbour news number {n} " * 3) for n in range(5)]
    lines = []
    for article in old:
        doc = to_document(article)
        del doc["story"]
        lines += [json.dumps({"index": {"_index": index_for(article, index.prefix), "_id": article.id}}),
                  json.dumps(doc)]
    call(index.settings.url, "POST", "/_bulk", params={"refresh": "true"}, content=("\n".join(lines) + "\n").encode(),
                headers={"Content-Type": "application/x-ndjson"})
    before = index.search("harbour")
    assert (before.total, before.articles, len(before.hits)) == (0, 5, 1)  # all in one group, and none counted
    index.connect()
    result = _refreshed(index).search("harbour")
    assert (result.total, result.articles, len(result.hits)) == (5, 5, 5)
    assert {h.story for h in result.hits} == {a.id for a in old}


def test_the_api_over_the_search_node(es_url, es_prefix, make_settings):
    from fastapi.testclient import TestClient

    from newsmon.app.api.app import create_app

    settings = make_settings(**{"elasticsearch": {"url": es_url, "index_prefix": es_prefix}})
    writer = open_index(settings)
    first, copy, other = _story_articles()
    assert writer.write([first, copy, other]) == []
    _refreshed(writer).close()
    assert (settings.data_dir / "stories.db").exists()

    with TestClient(create_app(settings)) as client:
        body = client.get("/api/search", params={"q": "frigates OR cycling"}).json()
        assert (body["total"], body["articles"]) == (2, 3)
        grouped = next(h for h in body["hits"] if h["story"] == first.id)
        assert "<mark>frigates</mark>" in grouped["snippet"].lower()
        assert len(grouped["duplicates"]) == 1
        assert {"value": "harbour", "count": 2} in body["facets"]["tag"]
        assert body["facets"]["source"] == [{"value": "Wire", "count": 2}, {"value": "Ellis Post", "count": 1}]
        assert body["timeline"] == [{"day": "2026-02-11", "count": 1}, {"day": "2026-02-12", "count": 1}]
        assert client.get("/api/search", params={"q": "frigates", "page": 2, "size": 1}).json()["hits"] == []

        record = client.get(f"/api/articles/{copy.id}").json()
        assert record["title"] == copy.title and record["text"] == TRIMMED_COPY
        assert record["story"] == first.id and [d["id"] for d in record["duplicates"]] == [first.id]
        assert client.get(f"/api/articles/{'0' * 32}").status_code == 404

        rows = list(csv.DictReader(io.StringIO(client.get("/api/search.csv", params={"q": "frigates"}).text)))
        assert sorted((r["id"], r["story"]) for r in rows) == sorted([(first.id, first.id), (copy.id, first.id)])
        assert rows[0]["id"] == copy.id  # newest first
        lines = client.get("/api/search.ndjson", params={"tag": "harbour"}).text.splitlines()
        records = [json.loads(line) for line in lines]
        assert sorted(r["id"] for r in records) == sorted([first.id, copy.id, other.id])
        assert all(r["text"] and r["story"] for r in records)
