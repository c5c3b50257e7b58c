import pytest

from ingest.urls import canonicalize


@pytest.mark.parametrize("url, expected", [
    ("HTTPS://Example.ORG/News/Story.html", "https://example.org/News/Story.html"),
    ("https://example.org:443/a", "https://example.org/a"),
    ("http://example.org:80/a", "http://example.org/a"),
    ("http://example.org:8080/a", "http://example.org:8080/a"),
    ("https://example.org/a?utm_source=rss&utm_medium=feed&id=7#top", "https://example.org/a?id=7"),
    ("https://example.org/a?fbclid=1&gclid=2&page=2", "https://example.org/a?page=2"),
    ("https://example.org", "https://example.org/"),
    ("http://example.org/a", "http://example.org/a"),  # http stays http: not over-normalised
    ("https://example.org/a/", "https://example.org/a/"),  # trailing slash kept
])
def test_canonicalize(url, expected):
    assert canonicalize(url) == expected


@pytest.mark.parametrize("url", ["ftp://example.org/a", "javascript:alert(1)", "https:///nohost"])
def test_non_http_urls_are_rejected(url):
    with pytest.raises(ValueError):
        canonicalize(url)
