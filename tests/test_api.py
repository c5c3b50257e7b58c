"""`newsmon serve`: the search API over the demo data, as an analyst's program uses it over HTTP."""

from __future__ import annotations

import csv
import io
import itertools
import json
import tracemalloc
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from newsmon import settings as config
from newsmon.app.api.app import create_app
from newsmon.app.api.exports import csv_chunks, ndjson_chunks
from newsmon.record import Article, TagHit, article_id
from newsmon.settings import SubscribersFile
from sinks.sqlite_index import SqliteIndex
from tests.support.harness import start_server

pytestmark = pytest.mark.slow  # the demo pipeline runs once for the module (session fixture)

EURONEWS_TITLE = "Les alliés de l'OTAN promettent 35 milliards d'aide à l'Ukraine"


@pytest.fixture(scope="module")
def api(api_server):
    with httpx.Client(base_url=api_server, timeout=30) as client:
        yield client


def _euronews(hits: list[dict]) -> dict | None:
    return next((h for h in hits if h["title"] == EURONEWS_TITLE), None)


def test_search_finds_the_euronews_article_highlighted_with_facets_and_timeline(api):
    answer = api.get("/api/search", params={"q": "securite", "lang": "fr"})
    assert answer.status_code == 200
    body = answer.json()
    hit = _euronews(body["hits"])
    assert hit is not None, [h["title"] for h in body["hits"]]
    assert "<mark>sécurité</mark>" in hit["snippet"]
    assert hit["language"] == "fr" and hit["source"] == "Euronews" and "nato" in hit["tags"]
    assert body["total"] == len(body["hits"]) == body["articles"]
    assert {"value": "fr", "count": body["total"]} in body["facets"]["language"]
    assert {"value": "Euronews", "count": 1} in body["facets"]["source"]
    assert {"day": "2026-02-12", "count": 1} in body["timeline"]
    assert sum(d["count"] for d in body["timeline"]) == body["total"]
    assert api.get("/api/search", params={"q": "securite", "lang": "de"}).json()["total"] == 0  # the filter filters


def test_filters_sort_and_pages(api):
    every = api.get("/api/search", params={"size": 100}).json()
    assert every["total"] == 14
    dates = [h["published"] for h in every["hits"]]
    assert dates == sorted(dates, reverse=True)  # no query: newest first
    pages = [api.get("/api/search", params={"size": 5, "page": n}).json()["hits"] for n in (1, 2, 3)]
    ids = [h["id"] for page in pages for h in page]
    assert len(ids) == len(set(ids)) == 14 and [len(p) for p in pages] == [5, 5, 4]

    nato_fr = api.get("/api/search", params=[("tag", "nato"), ("lang", "fr"), ("lang", "es")]).json()
    assert nato_fr["total"] == 2 and all(h["language"] in ("fr", "es") and "nato" in h["tags"] for h in nato_fr["hits"])
    assert sorted(h["language"] for h in nato_fr["hits"]) == ["es", "fr"]  # either language: OR within a filter
    feb = api.get("/api/search", params={"since": "2026-02-12", "until": "2026-02-13T00:00:00Z"}).json()
    assert [(h["title"], h["published"]) for h in feb["hits"]] == [(EURONEWS_TITLE, "2026-02-12T16:45:00Z")]
    euronews = api.get("/api/search", params={"source": "Euronews"}).json()
    assert [h["title"] for h in euronews["hits"]] == [EURONEWS_TITLE]
    facets_only = api.get("/api/search", params={"size": 0}).json()
    assert facets_only["hits"] == [] and facets_only["total"] == 14
    assert facets_only["facets"]["language"] == [{"value": v, "count": n} for v, n in (
        ("en", 3), ("fr", 3), ("de", 2), ("es", 2), ("it", 2), ("nl", 1), ("pt", 1))]
    excluded = api.get("/api/search", params={"q": "NATO OR OTAN -Rutte"}).json()
    assert (excluded["total"], api.get("/api/search", params={"q": "NATO OR OTAN"}).json()["total"]) == (5, 6)
    assert EURONEWS_TITLE not in [h["title"] for h in excluded["hits"]]  # the one that names Rutte


@pytest.mark.parametrize("params, parameter", [
    ({"size": 101}, "size"),
    ({"page": 0}, "page"),
    ({"page": 600, "size": 20}, "page"),  # beyond the 10,000th result
    ({"lang": "French!"}, "lang"),
    ({"sort": "random"}, "sort"),
    ({"since": "last tuesday"}, "since"),
    ({"until": "2026-13-45"}, "until"),
    ({"q": "x" * 501}, "q"),
    ({"tag": ""}, "tag"),
])
def test_invalid_parameters_get_422_naming_the_parameter(api, params, parameter):
    answer = api.get("/api/search", params=params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"].startswith(parameter), answer.json()


def test_an_article_in_full_and_unknown_ones(api):
    hit = _euronews(api.get("/api/search", params={"q": "otan", "lang": "fr"}).json()["hits"])
    record = api.get(f"/api/articles/{hit['id']}").json()
    assert record["title"] == EURONEWS_TITLE and "Arctic Sentry" in record["text"]
    assert {t["topic"] for t in record["tags"]} >= {"nato", "ukraine"} and record["story"] == hit["story"]
    assert api.get(f"/api/articles/{'0' * 32}").status_code == 404
    assert "no article" in api.get(f"/api/articles/{'0' * 32}").json()["error"]
    assert api.get("/api/articles/not-an-id").status_code == 422


def test_exports_stream_every_match_as_csv_and_ndjson(api):
    with api.stream("GET", "/api/search.csv", params={"q": "NATO OR OTAN"}) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
        assert "attachment" in answer.headers["content-disposition"]
        assert answer.headers.get("transfer-encoding") == "chunked"  # streamed, not built in memory first
        rows = list(csv.DictReader(io.StringIO(answer.read().decode())))
    total = api.get("/api/search", params={"q": "NATO OR OTAN"}).json()["articles"]
    assert len(rows) == total >= 4
    euronews = next(r for r in rows if r["title"] == EURONEWS_TITLE)
    assert euronews["language"] == "fr" and "nato" in euronews["tags"].split()
    lines = api.get("/api/search.ndjson", params={"lang": "fr"}).text.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == api.get("/api/search", params={"lang": "fr"}).json()["articles"]
    assert all(r["language"] == "fr" and r["text"] and r["story"] for r in records)


def _article(n: int, text: str, *, title: str = "", source: str = "Wire") -> Article:
    url = f"https://news.example.org/{n}"
    return Article(id=article_id(url), url=url, canonical_url=url, feed_url="https://news.example.org/feed",
                   source=source, title=title or f"Story {n}", text=text, language="en",
                   published=f"2026-03-{n % 28 + 1:02d}T10:00:00Z", tags=[TagHit("harbour", {"harbour": 1}, [])])


def test_export_memory_stays_constant_however_many_rows(tmp_path):
    index = SqliteIndex(tmp_path / "index.db")
    for start in range(0, 6000, 1000):  # distinct texts (no story grouping work): 2 KB each
        index.write([_article(n, "harbour " + " ".join(f"w{n}x{k}" for k in range(250)))
                           for n in range(start, start + 1000)])
    reader = SqliteIndex(tmp_path / "index.db")

    def peak(chunks, text: bool, batches: int | None) -> tuple[int, int]:
        tracemalloc.start()
        size = sum(len(chunk) for chunk in itertools.islice(chunks(reader.export("harbour", text=text)), batches))
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return size, top

    for chunks, text in ((csv_chunks, False), (ndjson_chunks, True)):
        peak(chunks, text, 1)  # warm up: first-use allocations are not the export's
        few_size, few_peak = peak(chunks, text, 2)  # 1,000 rows
        all_size, all_peak = peak(chunks, text, None)  # 6,000 rows
        assert all_size > 5 * few_size and all_peak < 1.5 * few_peak, (few_size, few_peak, all_size, all_peak)
    assert sum(1 for _ in reader.export("harbour")) == 6000


def test_near_duplicates_are_one_hit_and_count_once(tmp_path, config_dir):
    story = ("The port authority of Ellis confirmed on Tuesday that three NATO frigates will dock next week "
             "to load equipment bound for Ukraine, the largest such shipment since the spring. Dock workers "
             "said the preparations began overnight and would continue through the weekend, with road closures "
             "around the northern quay. The mayor welcomed the visit and promised minimal disruption to ferries.")
    copy = story.replace(" The mayor welcomed the visit and promised minimal disruption to ferries.", "")
    other = ("The city council approved a new cycling lane along the river on Monday after a long debate about "
             "parking spaces, trees and the cost of the works, which begin in April and last four months.")
    index = SqliteIndex(tmp_path / "data" / "index.db")
    first, second, third = (_article(1, story, title="NATO frigates to dock at Ellis", source="Ellis Post"),
                            _article(2, copy, title="Frigates due in Ellis port", source="Wire"),
                            _article(3, other, title="Cycling lane approved"))
    index.write([first, second, third])
    index.close()
    app = create_app(config.load(config_dir, tmp_path / "data"))
    with TestClient(app) as client:
        body = client.get("/api/search", params={"q": "frigates OR cycling"}).json()
        assert (body["total"], body["articles"]) == (2, 3)
        grouped = next(h for h in body["hits"] if h["story"] == first.id)
        assert [d["id"] for d in grouped["duplicates"]] == [second.id if grouped["id"] == first.id else first.id]
        assert {"value": "harbour", "count": 2} in body["facets"]["tag"]
        assert sum(d["count"] for d in body["timeline"]) == 2
        record = client.get(f"/api/articles/{second.id}").json()
        assert record["story"] == first.id and [d["id"] for d in record["duplicates"]] == [first.id]
        lines = client.get("/api/search.ndjson", params={"q": "frigates"}).text.splitlines()
        assert sorted(json.loads(line)["id"] for line in lines) == sorted([first.id, second.id])  # exports keep copies


def test_saved_searches_round_trip_and_share_as_urls(api):
    created = api.post("/api/saved-searches", json={"name": "NATO fr", "q": "otan", "lang": ["fr"],
                                                    "since": "2026-01-01"})
    assert created.status_code == 201, created.text
    saved = created.json()
    assert saved["url"].startswith("/?") and "q=otan" in saved["url"] and "lang=fr" in saved["url"]
    assert saved in api.get("/api/saved-searches").json()["saved_searches"]
    assert api.get(f"/api/saved-searches/{saved['id']}").json() == saved
    shared = api.get("/api/search" + saved["url"][1:]).json()  # the link's query is the API's query
    assert _euronews(shared["hits"]) is not None
    assert api.post("/api/saved-searches", json={"name": "", "q": "x"}).status_code == 422
    assert api.delete(f"/api/saved-searches/{saved['id']}").status_code == 204
    assert api.delete(f"/api/saved-searches/{saved['id']}").status_code == 404
    assert saved not in api.get("/api/saved-searches").json()["saved_searches"]


def test_a_search_becomes_a_valid_alert_subscription(api):
    snippet = api.get("/api/alert-snippet", params={"q": '"Arctic Sentry" OR otan', "lang": "fr", "tag": "nato",
                                                    "name": "desk-fr"}).json()
    subscribers = SubscribersFile(**yaml.safe_load(snippet["yaml"])).subscribers
    rule = subscribers[0].rules[0]
    assert subscribers[0].name == "desk-fr" and rule.query == '"Arctic Sentry" OR otan'
    assert rule.languages == ["fr"] and rule.tags == ["nato"]
    assert snippet["cli"].startswith("newsmon alerts add desk-fr --query '\"Arctic Sentry\" OR otan'")
    assert api.get("/api/alert-snippet", params={"lang": "fr"}).status_code == 400  # a rule needs words or a tag


def test_the_subscribers_atom_feed_is_served(api):
    feed = api.get("/api/alerts/demo-desk/feed.atom")
    assert feed.status_code == 200 and feed.headers["content-type"].startswith("application/atom+xml")
    entries = ElementTree.fromstring(feed.content).findall("{http://www.w3.org/2005/Atom}entry")
    assert [e.findtext("{http://www.w3.org/2005/Atom}title") for e in entries] == [EURONEWS_TITLE]  # the demo's one alert
    assert entries[0].find("{http://www.w3.org/2005/Atom}link").get("href").endswith("/otan-ukraine-aide-35-milliards.html")
    assert api.get("/api/alerts/nobody/feed.atom").status_code == 404


def test_openapi_document_describes_every_route(api):
    document = api.get("/openapi.json").json()
    assert {"/api/search", "/api/articles/{article_id}", "/api/search.csv", "/api/search.ndjson",
            "/api/saved-searches", "/api/saved-searches/{saved_id}", "/api/alert-snippet"} <= set(document["paths"])
    sizes = next(p for p in document["paths"]["/api/search"]["get"]["parameters"] if p["name"] == "size")
    assert sizes["schema"]["maximum"] == 100
    page = api.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]


def test_a_token_guards_every_route(demo_data):
    base, proc = start_server({**demo_data, "NEWSMON_API_TOKEN": "s3cret-token"})
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            for path in ("/api/search", "/openapi.json", "/static/app.js", "/api/saved-searches", "/api/docs"):
                refused = client.get(path)
                assert refused.status_code == 401, path
                assert refused.headers["www-authenticate"] == "Bearer"
            page = client.get("/?q=otan&lang=fr")  # a browser is sent to sign in, and back here after
            assert page.status_code == 303 and page.headers["location"] == "/login?next=%2F%3Fq%3Dotan%26lang%3Dfr"
            assert 'name="next" value="/?q=otan&amp;lang=fr"' in client.get(page.headers["location"]).text
            assert client.get("/healthz").status_code == 200  # liveness for orchestrators, no data
            assert client.get("/api/search", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert client.get("/api/search", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
            assert client.post("/login", data={"token": "wrong"}).status_code == 401
            assert client.post("/login", data={"token": "s3cret-token", "next": "//evil.example"}).headers[
                "location"] == "/"  # never sent to another site
            login = client.post("/login", data={"token": "s3cret-token", "next": "/?q=otan"})
            assert login.status_code == 303 and login.headers["location"] == "/?q=otan"
            assert "httponly" in login.headers["set-cookie"].lower()
            assert client.get("/").status_code == 200
            assert client.get("/api/search").status_code == 200  # the cookie the login set
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def demo_app(demo_data):
    return create_app(config.load(Path(demo_data["NEWSMON_CONFIG_DIR"]), Path(demo_data["NEWSMON_DATA_DIR"])))


def test_no_input_makes_a_server_error(demo_app):
    """Fuzz every operation from the OpenAPI document (schemathesis), with inputs the document allows and
    inputs it forbids: each gets an answer the document describes (422 for the forbidden), never a 500
    (the in-process client raises what the app raised, which fails the test too)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_asgi("/openapi.json", demo_app)
    checks = [schemathesis.checks.not_a_server_error, schemathesis.checks.response_schema_conformance]
    answered = 0
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        for result in schema.get_all_operations():
            operation = result.ok()

            @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                nonlocal answered
                case.validate_response(case.call(), checks=checks)
                answered += 1

            try:
                check()
            except Unsatisfiable:
                assert mode == schemathesis.GenerationMode.NEGATIVE  # nothing to get wrong: no parameters
    assert answered > 500


def test_repeated_searches_are_answered_from_the_cache_until_the_index_changes(tmp_path, config_dir, monkeypatch):
    index = SqliteIndex(tmp_path / "data" / "index.db")
    index.write([_article(1, "Harbour dredging resumes on the northern channel.")])
    computed = []
    search = SqliteIndex.search
    monkeypatch.setattr(SqliteIndex, "search", lambda self, *a, **kw: computed.append(a) or search(self, *a, **kw))
    with TestClient(create_app(config.load(config_dir, tmp_path / "data"))) as client:
        first = client.get("/api/search", params={"q": "harbour"}).json()
        assert client.get("/api/search", params={"q": "harbour"}).json() == first and len(computed) == 1
        client.get("/api/search", params={"q": "harbour", "page": 2})
        assert len(computed) == 2  # another page is another answer
        index.write([_article(2, "The harbour master retires after forty years.")])
        after = client.get("/api/search", params={"q": "harbour"}).json()
        assert len(computed) == 3 and after["total"] == first["total"] + 1  # never a stale answer
    index.close()
