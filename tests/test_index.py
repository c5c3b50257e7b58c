import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newsmon.query import Term, parse
from newsmon.record import Article, TagHit, article_id
from newsmon.search import Filters
from sinks.sqlite_index import SqliteIndex


def _article(slug, title, text, language="fr", source="Le Site", tags=(), published="2026-02-12T10:00:00Z"):
    url = f"https://example.org/{slug}"
    return Article(id=article_id(url), url=url, canonical_url=url, feed_url="https://example.org/feed",
                   title=title, text=text, language=language, source=source, published=published,
                   tags=[TagHit(t, {t: 1}, []) for t in tags])


@pytest.fixture
def index(tmp_path):
    idx = SqliteIndex(tmp_path / "index.db")
    idx.write([
        _article("otan", "Les alliés de l'OTAN", "Pour la sécurité des États-Unis et de l'Europe, Arctic Sentry.",
                 tags=["nato", "security"]),
        _article("climat", "Le climat change", "Le réchauffement climatique menace la sécurité alimentaire.",
                 tags=["climate"], published="2026-01-05T08:00:00Z"),
        _article("nato-en", "NATO allies meet", "Security in the High North was discussed by defence ministers.",
                 language="en", source="Harbor Gazette", tags=["nato", "security"], published="2026-02-11T09:00:00Z"),
        _article("econ", "Inflation slows", "The central bank kept interest rates on hold.", language="en",
                 source="Harbor Gazette", tags=["economy"], published="2025-12-01T09:00:00Z"),
    ])
    yield idx
    idx.close()


def _titles(result):
    return [h.article.title for h in result.hits]


def test_accent_and_case_insensitive_with_highlight(index):
    result = index.search("securite", Filters(languages=["fr"]))
    assert result.total == 2
    assert "<mark>sécurité</mark>" in result.hits[0].snippet_html()


def test_filters_by_language_source_tag_and_dates(index):
    assert _titles(index.search("", Filters(languages=["en"]), sort="date")) == ["NATO allies meet", "Inflation slows"]
    assert index.search("", Filters(sources=["Harbor Gazette"])).total == 2
    assert sorted(_titles(index.search("", Filters(tags=["nato"])))) == ["Les alliés de l'OTAN", "NATO allies meet"]
    assert _titles(index.search("", Filters(since="2026-01-01T00:00:00Z", until="2026-02-12T00:00:00Z"), sort="date")) == [
        "NATO allies meet", "Le climat change"]


def test_query_syntax_phrase_or_exclusion_prefix(index):
    assert _titles(index.search('"Arctic Sentry"')) == ["Les alliés de l'OTAN"]
    assert _titles(index.search('"Sentry Arctic"')) == []
    assert sorted(_titles(index.search("otan OR inflation"))) == ["Inflation slows", "Les alliés de l'OTAN"]
    assert _titles(index.search("securite -climatique")) == ["Les alliés de l'OTAN"]
    assert sorted(_titles(index.search("-securite -security"))) == ["Inflation slows"]
    assert _titles(index.search("rechauff*")) == ["Le climat change"]


def test_title_matches_rank_above_body_matches(index):
    index.write([_article("body-only", "Autre sujet", "On parle aussi de l'OTAN ici, une fois.")])
    assert _titles(index.search("otan"))[0] == "Les alliés de l'OTAN"


def test_reindexing_updates_in_place(index):
    before = index.count()
    original = index.get(article_id("https://example.org/otan"))
    index.write([replace(original, title="Titre corrigé", tags=[TagHit("ukraine", {"Ukraine": 1}, [])])])
    assert index.count() == before
    assert index.search("corrige").total == 1
    assert index.search("alliés", Filters(languages=["fr"])).total == 0
    assert index.search("", Filters(tags=["nato"])).total == 1  # old tags replaced
    assert index.get(original.id).tag_names == ["ukraine"]


def test_parse():
    q = parse('nato "arctic sentry" -rutte a OR b clim* -"grand nord" ! OR')
    assert q.groups == [[Term("nato")], [Term("arctic sentry", phrase=True)], [Term("a"), Term("b")],
                        [Term("clim", prefix=True)]]
    assert q.excluded == [Term("rutte"), Term("grand nord", phrase=True)]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab "-*()OR:^\'NEAR{}+é\\.,\x00\x1f')), max_size=30))
def test_no_query_can_break_the_index(tmp_path_factory, query):
    """Whatever the query, the answer is a consistent one over the documents there are: no error, no
    hit twice, no more hits than asked or matched, each hit a document that contains what the query
    asks for (every word of a one-word query) and none that contains an excluded word."""
    idx = _FUZZ_INDEX.get("i")
    if idx is None:
        idx = _FUZZ_INDEX["i"] = SqliteIndex(tmp_path_factory.mktemp("fuzz") / "i.db")
        idx.write([_article(f"d{n}", title, text) for n, (title, text) in enumerate(_FUZZ_DOCS)])
    result = idx.search(query, limit=5)
    ids = [hit.article.id for hit in result.hits]
    assert 0 <= result.total <= len(_FUZZ_DOCS) and len(ids) == len(set(ids)) == min(5, result.total)
    def words(text: str) -> list[str]:  # as the index tokenizes: letters and digits, case and accents folded
        return re.findall(r"\w+", text.replace("é", "e").replace("É", "e").lower())

    parsed = parse(query)
    excluded = {w for t in parsed.excluded if not t.prefix and len(words(t.text)) == 1 for w in words(t.text)}
    only = parsed.groups[0][0] if len(parsed.groups) == 1 and len(parsed.groups[0]) == 1 else None
    for hit in result.hits:
        found = set(words(f"{hit.article.title} {hit.article.text}"))
        assert not excluded & found
        if only is not None and len(words(only.text)) == 1:
            (term,) = words(only.text)
            assert any(w.startswith(term) for w in found) if only.prefix else term in found


_FUZZ_INDEX: dict = {}
_FUZZ_DOCS = [("a b", "a"), ("b", "ab a"), ("é", "b b b"), ("OR", "NEAR a"), ("ab", "ba")]


STORY = ("The port authority of Ellis confirmed on Tuesday that three NATO frigates will dock next week to load "
         "equipment bound for Ukraine, the largest such shipment since the spring. Dock workers said the "
         "preparations began overnight and would continue through the weekend, with road closures around the "
         "northern quay. The mayor welcomed the visit and promised minimal disruption to the ferries.")


def test_whole_index_counts_kept_while_indexing_equal_counting_every_article(index, tmp_path):
    """The page with no words and no filters reads counts kept up to date by each upsert; they must be what
    counting every article gives (the general search path) and what a recount from scratch gives,
    through copies joining a story and re-indexed articles whose language, source and tags changed."""
    copy = STORY.replace(" The mayor welcomed the visit and promised minimal disruption to the ferries.", "")
    index.write([_article("ellis", "Frigates at Ellis", STORY, language="en", source="Ellis Post",
                                tags=["nato", "ukraine"], published="2026-02-10T08:00:00Z"),
                       _article("ellis-wire", "Frigates due in Ellis", copy, language="en", source="Wire",
                                tags=["nato"], published="2026-02-12T07:00:00Z")])
    index.write([_article("econ", "Inflation slows", "The central bank kept interest rates on hold.",
                                language="de", source="Other Paper", tags=["elections"]),  # re-indexed, changed
                       _article("ellis-wire", "Frigates due in Ellis", copy, language="en", source="Wire",
                                tags=["security"], published="2026-02-12T07:00:00Z")])

    def view(result):
        return (result.total, result.articles, result.facets, result.timeline,
                [(h.article.id, [d["id"] for d in h.duplicates]) for h in result.hits])

    kept = view(index.search("", limit=100))
    counted = view(index.search("", Filters(since="0"), limit=100))  # a filter everything passes: counts rows
    assert kept == counted
    assert (kept[0], kept[1]) == (5, 6) and kept[2]["source"]["Other Paper"] == 1 and "Harbor Gazette" in kept[2]["source"]
    assert kept[2]["tag"] == {"nato": 3, "security": 3, "climate": 1, "elections": 1, "ukraine": 1}
    index.recount()  # counted again from scratch: the same answer
    assert view(index.search("", limit=100)) == kept
    pages = [view(index.search("", limit=2, offset=n))[4] for n in (0, 2, 4)]
    assert [h for page in pages for h in page] == kept[4]  # the same order, page by page
