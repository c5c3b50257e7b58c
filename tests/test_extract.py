import time

import pytest

from ingest.extract import Extractor, decode_html, extract_html
from newsmon.errors import ExtractionError
from newsmon.settings import ExtractSettings
from tests.support.harness import EURONEWS_SLUG, demo_page

CHROME = ["Newsletter", "PUBLICITÉ", "Copier/coller", "À découvrir également", "Par Euronews", "Partager",
          "Tous droits réservés", "Accéder aux raccourcis", "Africanews"]


def test_euronews_page_body_without_chrome():
    html, encoding, warnings = decode_html(demo_page(EURONEWS_SLUG))
    assert (encoding, warnings) == ("utf-8", [])
    page = extract_html(html, "http://127.0.0.1:8765/articles/x.html")
    assert page.method == "json-ld"  # the page's paragraphs and its JSON-LD articleBody agree word for word
    assert page.text.startswith("Le secrétaire général de l'OTAN, Mark Rutte, a souligné")
    assert page.text.endswith("sous une stratégie opérationnelle globale.")
    for wanted in ("Arctic Sentry", "Boris Pistorius", "Engagements bilatéraux", "John Healey"):
        assert wanted in page.text
    assert [c for c in CHROME if c in page.text] == []
    assert page.title == "Les alliés de l'OTAN promettent 35 milliards d'aide à l'Ukraine"
    assert (page.sitename, page.date, page.date_source) == ("Euronews", "2026-02-12T17:45:00+01:00", "json-ld")
    assert page.canonical_url == f"http://127.0.0.1:8765/articles/{EURONEWS_SLUG}.html"


@pytest.mark.parametrize("raw, header, expected_text, expected_encoding, warned", [
    ("<meta charset='iso-8859-1'><p>sécurité</p>".encode("latin-1"), None, "sécurité", "cp1252", False),
    ("<meta http-equiv='Content-Type' content='text/html; charset=windows-1252'><p>“Ça”</p>".encode("cp1252"), None, "“Ça”", "cp1252", False),
    ("<meta charset='iso-8859-1'><p>sécurité</p>".encode("utf-8"), "utf-8", "sécurité", "utf-8", False),  # header wins
    ("\ufeff<p>sécurité</p>".encode("utf-8"), "iso-8859-1", "sécurité", "utf-8", False),  # BOM wins
    ("<p>sécurité et défense de l'Europe, réunion à Bruxelles</p>".encode("utf-8"), None, "sécurité", "utf-8", True),  # detected
    (b"<meta charset='utf-8'><p>caf\xe9 s\xc3\xa9curit\xc3\xa9</p>", None, "s\u00e9curit\u00e9", "utf-8", True),  # invalid byte
])
def test_charset_cascade(raw, header, expected_text, expected_encoding, warned):
    text, encoding, warnings = decode_html(raw, header)
    assert expected_text in text
    assert encoding == expected_encoding
    assert bool(warnings) == warned


def test_invalid_bytes_are_replaced_and_reported():
    text, _, warnings = decode_html(b"<meta charset='utf-8'><p>caf\xe9</p>")
    assert "caf\ufffd" in text
    assert warnings == ["invalid utf-8 byte sequence at offset 28; replaced"]


def test_short_extraction_falls_back_to_json_ld_article_body():
    body = "Premier paragraphe de l'article, assez long pour compter. " * 3
    html = (f'<html><head><script type="application/ld+json">{{"@context":"https://schema.org","@graph":['
            f'{{"@type":"WebPage"}},{{"@type":"NewsArticle","headline":"T","articleBody":"{body}\\n\\nSecond."}}]}}'
            '</script></head><body><div id="app"></div></body></html>')
    page = extract_html(html)
    assert page.method == "json-ld"
    assert page.text == body.strip() + "\nSecond."


def test_page_without_text_is_an_error():
    with pytest.raises(ExtractionError, match="no extractable text"):
        extract_html("<html><body><nav><a href='/'>Home</a></nav></body></html>", "http://x.example/a")


@pytest.mark.slow
def test_extraction_in_workers_is_cut_off_after_the_time_limit():
    # 2.5 MB of paragraphs: several seconds of extraction, far more than the limit.
    heavy = "<html><body>" + "<div><p>A paragraph about the harbour and the council.</p></div>" * 30000 + "</body></html>"
    html, _, _ = decode_html(demo_page(EURONEWS_SLUG))
    extractor = Extractor(ExtractSettings(workers=1, timeout=1.0, max_tasks_per_worker=2))
    try:
        started = time.monotonic()
        with pytest.raises(ExtractionError, match="longer than 1 s and was stopped"):
            extractor(heavy, "http://x.example/heavy")
        assert time.monotonic() - started < 5
        # The stopped worker is replaced, and workers are recycled every 2 pages: results keep coming.
        assert all("Arctic Sentry" in extractor(html, "http://x.example/a").text for _ in range(5))
    finally:
        extractor.close()
