"""The real search cluster from tests: the sink's settings for a test, and requests straight to the
node (setup, checks, clean-up) that do not go through the code under test. $ES_CA_FILE names a
cluster's own CA; credentials come from NEWSMON_ES_API_KEY or NEWSMON_ES_USERNAME/PASSWORD, as in
production."""

from __future__ import annotations

import os

import httpx

from newsmon.record import Article, TagHit, article_id
from newsmon.settings import ElasticsearchSettings


def es_settings(url: str, **overrides) -> ElasticsearchSettings:
    """The sink's settings for a test on the cluster at ``url``: short retries."""
    values = {"url": url, "ca_file": os.environ.get("ES_CA_FILE") or None, "backoff_max": 0.2, "give_up_after": 10.0}
    return ElasticsearchSettings(**{**values, **overrides})


def call(url: str, method: str, path: str, **kwargs) -> dict:
    """One request to the node at ``url``; its JSON answer (an HTTPStatusError for 4xx/5xx)."""
    headers, auth = {"Accept": "application/json", **kwargs.pop("headers", {})}, None
    if os.environ.get("NEWSMON_ES_API_KEY"):
        headers["Authorization"] = f"ApiKey {os.environ['NEWSMON_ES_API_KEY']}"
    elif os.environ.get("NEWSMON_ES_USERNAME"):
        auth = (os.environ["NEWSMON_ES_USERNAME"], os.environ.get("NEWSMON_ES_PASSWORD", ""))
    with httpx.Client(base_url=url, verify=os.environ.get("ES_CA_FILE") or True, auth=auth, timeout=30) as node:
        answer = node.request(method, path, headers=headers, **kwargs)
    answer.raise_for_status()
    return answer.json()


def refresh(url: str, prefix: str) -> None:
    """Make what was just written under ``prefix`` searchable now rather than within the refresh interval
    (once its indices' shards are up: a loaded node answers 503 to a search of a just-created index)."""
    call(url, "GET", f"/_cluster/health/{prefix}-*", params={"wait_for_status": "yellow", "timeout": "30s"})
    call(url, "POST", f"/{prefix}-*/_refresh", params={"allow_no_indices": "true"})


def stored(url: str, prefix: str) -> dict[str, dict]:
    """Every document under ``prefix`` on the node itself, by id."""
    refresh(url, prefix)
    answer = call(url, "POST", f"/{prefix}-*/_search", params={"allow_no_indices": "true"},
                  json={"size": 10_000, "query": {"match_all": {}}})
    return {hit["_id"]: {"_index": hit["_index"], **hit["_source"]} for hit in answer["hits"]["hits"]}


def delete_prefix(url: str, prefix: str) -> None:
    """The indices and the template a test made under ``prefix``, gone."""
    for concrete in call(url, "GET", f"/{prefix}-*/_alias", params={"allow_no_indices": "true"}):
        call(url, "DELETE", f"/{concrete}")
    try:
        call(url, "DELETE", f"/_index_template/{prefix}")
    except httpx.HTTPStatusError as exc:  # a test that never connected installed no template
        assert exc.response.status_code == 404, exc


def news_article(n: int, *, language="en", text="The council met on Monday.", title=None, published="2026-02-12T16:45:00Z",
                 tags=()) -> Article:
    """Article ``n`` of a fictional news site, indexed as the index stage gets it."""
    url = f"https://news.example.org/a{n}"
    return Article(
        id=article_id(url), url=url, canonical_url=url, feed_url="https://news.example.org/feed.xml",
        source="Example News", title=title or f"Story {n}", text=text, language=language, published=published,
        discovered="2026-03-01T08:00:00Z", fetched="2026-03-01T08:00:05Z",
        tags=[TagHit(t, {t: 1}, [(0, len(t))]) for t in tags],
    )
