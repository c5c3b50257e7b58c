"""End-to-end tests of the analyst web page in headless Chromium (Debian's package, driven by Playwright).

The page is served by ``newsmon serve`` over the demo data (fixtures ``demo_data`` and
``api_server``). Screenshots and the exported CSV are kept in ``test-artifacts/``. Waiting is
Playwright's auto-waiting ``expect``: no sleeps.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.support.harness import REPO

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
EURONEWS_TITLE = "Les alliés de l'OTAN promettent 35 milliards d'aide à l'Ukraine"
CSV_HEADER = ["id", "url", "title", "source", "language", "published", "tags", "story"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (`make test` installs Debian's chromium)"),
]


# -- browser ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        yield browser
        browser.close()


@pytest.fixture
def problems() -> list[str]:
    """Script errors, CSP violations and dialogs seen by the page: each test ends with none."""
    return []


def _open_page(browser, problems: list[str], **context_options) -> Page:
    context = browser.new_context(accept_downloads=True, locale="en-GB", timezone_id="UTC", **context_options)
    context.set_default_timeout(10_000)
    page = context.new_page()

    def console(message) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            problems.append(f"CSP: {message.text}")

    def dialog(dialog) -> None:
        problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on("console", console)
    page.on("dialog", dialog)
    return page


@pytest.fixture
def page(browser, problems):
    page = _open_page(browser, problems, viewport={"width": 1280, "height": 900})
    yield page
    page.context.close()
    assert problems == []


def _search(page: Page, query: str) -> None:
    box = page.get_by_role("searchbox", name="Search articles")
    box.fill(query)
    box.press("Enter")


def _screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / name, full_page=True)


def _results_ready(page: Page) -> None:
    """The results are drawn for the current URL (the page marks them busy while it asks the API)."""
    expect(page.locator("#results")).not_to_have_attribute("aria-busy", "true")


def _french(page: Page):
    """The language facet's checkbox for French ("French (fr)", then its count)."""
    return page.get_by_role("group", name="Language").get_by_role("checkbox", name=re.compile(r"\(fr\)"))


def _hit(page: Page, title: str):
    return page.locator("#hits > li").filter(has=page.get_by_role("heading", name=title, exact=True))


def _no_horizontal_scroll(page: Page) -> None:
    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1], f"the page scrolls sideways: content {widths[0]}px in a {widths[1]}px viewport"


# -- the scenario of issue #6 ---------------------------------------------------------------------

def test_search_filter_open_article_and_export_csv(page: Page, api_server: str):
    page.goto(api_server + "/")
    _search(page, "securite")
    expect(page).to_have_url(re.compile(r"/\?q=securite$"))
    expect(page.locator("#result-count")).to_contain_text("match “securite”")

    _french(page).check()
    expect(page).to_have_url(re.compile(r"/\?q=securite&lang=fr$"))
    _results_ready(page)
    expect(_french(page)).to_be_checked()
    hits = page.locator("#hits > li")
    expect(hits.first).to_be_visible()
    for meta in hits.locator(".hit-meta").all():
        expect(meta).to_contain_text("French (fr)")

    euronews = _hit(page, EURONEWS_TITLE)
    expect(euronews).to_have_count(1)
    expect(euronews.locator(".hit-meta")).to_contain_text("Euronews")
    marks = euronews.locator(".snippet mark")
    expect(marks.first).to_have_text("sécurité")
    assert {m.lower() for m in marks.all_text_contents()} == {"sécurité"}
    chart = page.locator("#timeline svg")
    expect(chart.locator("rect.bar").first).to_be_attached()
    expect(page.locator("#timeline-table tbody tr").first).to_contain_text("2026")
    _screenshot(page, "search-securite-fr.png")

    euronews.get_by_role("link", name=EURONEWS_TITLE).click()
    expect(page).to_have_url(re.compile(r"[?&]article=[0-9a-f]{32}$"))
    view = page.locator("#article-view")
    expect(view.get_by_role("heading", level=2)).to_have_text(EURONEWS_TITLE)
    expect(view.get_by_role("heading", level=2)).to_be_focused()
    article_id = page.url.rsplit("=", 1)[1]
    record = page.request.get(f"{api_server}/api/articles/{article_id}").json()
    # The whole extracted text, as text (whitespace aside: lines become paragraphs).
    assert " ".join(page.locator("#article-text").inner_text().split()) == " ".join(record["text"].split())
    expect(page.locator("#article-text")).to_contain_text("sécurité")
    tags = page.locator("#article-tags")
    for topic in record["tags"]:
        expect(tags).to_contain_text(topic["topic"])
    expect(tags).to_contain_text(re.compile(r"OTAN ×\d+"))
    expect(page.locator("#article-meta")).to_contain_text("Euronews")
    original = view.get_by_role("link", name=re.compile("Read the original"))
    expect(original).to_have_attribute("rel", "noopener noreferrer")
    expect(original).to_have_attribute("href", record["final_url"] or record["url"])
    _screenshot(page, "article.png")

    page.go_back()
    expect(page).to_have_url(re.compile(r"/\?q=securite&lang=fr$"))
    expect(_hit(page, EURONEWS_TITLE)).to_have_count(1)
    expect(page.locator("#article-view")).to_be_hidden()

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export CSV").click()
    download = download_info.value
    ARTIFACTS.mkdir(exist_ok=True)
    download.save_as(ARTIFACTS / "search-securite-fr.csv")
    exported = csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8")))
    assert exported.fieldnames == CSV_HEADER
    records = list(exported)
    assert any(r["source"] == "Euronews" and r["title"] == EURONEWS_TITLE for r in records), records
    assert {r["language"] for r in records} == {"fr"}


def test_keyboard_only(page: Page, api_server: str):
    page.goto(api_server + "/")
    expect(page.locator("#result-count")).not_to_be_empty()
    for _ in range(5):  # skip link, site name, then the search box
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "q":
            break
    expect(page.get_by_role("searchbox", name="Search articles")).to_be_focused()
    page.keyboard.type("securite")
    page.keyboard.press("Enter")
    expect(page.locator("#result-count")).to_contain_text("match “securite”")

    french = _french(page)
    _tab_to(page, french)
    page.keyboard.press("Space")
    expect(page).to_have_url(re.compile(r"lang=fr"))
    _results_ready(page)
    expect(french).to_be_checked()
    expect(french).to_be_focused()  # redrawn facets keep the keyboard user's place

    link = _hit(page, EURONEWS_TITLE).get_by_role("link", name=EURONEWS_TITLE)
    _tab_to(page, link)
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none"), "the focused link shows no focus ring"
    page.keyboard.press("Enter")
    heading = page.locator("#article-view").get_by_role("heading", level=2)
    expect(heading).to_have_text(EURONEWS_TITLE)
    expect(heading).to_be_focused()

    back = page.get_by_role("link", name="Back to results")
    _tab_to(page, back, reverse=True)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/\?q=securite&lang=fr$"))
    expect(link).to_be_focused()  # back where the analyst left the list


def test_pages_sort_and_history(page: Page, api_server: str):
    page.goto(api_server + "/?size=5")
    expect(page.locator("#result-count")).to_contain_text("14 stories in the index")
    pages = page.get_by_role("navigation", name="Result pages")
    expect(pages).to_contain_text("Page 1 of 3")
    expect(page.locator("#page-prev")).to_have_attribute("aria-disabled", "true")  # no href: not a link
    first_page = page.locator("#hits h3").all_text_contents()
    pages.get_by_role("link", name="Next").click()
    expect(page).to_have_url(re.compile(r"/\?page=2&size=5$"))
    expect(pages).to_contain_text("Page 2 of 3")
    expect(page.get_by_role("heading", name="Results")).to_be_focused()
    _results_ready(page)
    assert not set(page.locator("#hits h3").all_text_contents()) & set(first_page)

    page.go_back()
    expect(pages).to_contain_text("Page 1 of 3")
    page.go_forward()
    expect(pages).to_contain_text("Page 2 of 3")

    _search(page, "nato OR otan")
    expect(page).to_have_url(re.compile(r"/\?q=nato\+OR\+otan&size=5$"))  # a new search starts at page 1
    page.get_by_label("Sort by").select_option("date")
    expect(page).to_have_url(re.compile(r"&sort=date"))
    _results_ready(page)
    published = page.locator("#hits time").evaluate_all("times => times.map(t => t.dateTime)")
    assert published == sorted(published, reverse=True)


def _tab_to(page: Page, target, reverse: bool = False, limit: int = 60) -> None:
    handle = target.element_handle()
    for _ in range(limit):
        page.keyboard.press("Shift+Tab" if reverse else "Tab")
        if page.evaluate("element => document.activeElement === element", handle):
            return
    raise AssertionError(f"{limit} presses of Tab did not reach {target}")


def test_narrow_screen(browser, problems, api_server: str):
    page = _open_page(browser, problems, viewport={"width": 375, "height": 812}, is_mobile=True, has_touch=True)
    try:
        page.goto(api_server + "/?q=securite&lang=fr")
        euronews = _hit(page, EURONEWS_TITLE)
        expect(euronews.locator(".snippet mark").first).to_have_text("sécurité")
        _no_horizontal_scroll(page)
        results, filters = page.locator("#results").bounding_box(), page.locator("#filters").bounding_box()
        assert results["y"] > filters["y"] and results["x"] == pytest.approx(filters["x"], abs=2), "not one column"
        _screenshot(page, "narrow.png")

        euronews.get_by_role("link", name=EURONEWS_TITLE).click()
        expect(page.locator("#article-text")).to_contain_text("sécurité")
        _no_horizontal_scroll(page)
        _screenshot(page, "narrow-article.png")
    finally:
        page.context.close()
    assert problems == []


def test_query_text_is_never_markup(page: Page, api_server: str):
    attack = "<img src=x onerror=alert(1)>"
    page.goto(api_server + "/")
    _search(page, attack)
    expect(page.locator("#result-count")).to_contain_text(f"“{attack}”")
    expect(page.get_by_role("searchbox", name="Search articles")).to_have_value(attack)
    assert page.locator("img").count() == 0
    page.goto(api_server + "/?q=" + "%3Cscript%3Ealert(2)%3C%2Fscript%3E")
    expect(page.locator("#result-count")).to_contain_text("<script>alert(2)</script>")
    assert page.locator("main script").count() == 0  # the `page` fixture also asserts no dialog opened


def test_article_data_is_never_markup(page: Page, api_server: str):
    """Whatever a feed put in an article (or a buggy server let through) is shown as text: only <mark>
    pairs of a snippet become elements, and only http(s) URLs become links."""
    evil = "<img src=x onerror=alert(1)>"
    hit = {"id": "a" * 32, "url": "javascript:alert(2)", "title": evil, "source": evil, "language": "fr",
           "tags": [evil], "published": "2026-02-12T16:45:00Z", "story": "a" * 32,
           "snippet": f"before <mark>match</mark> &lt;b&gt;&#x27;{evil} <script>alert(3)</script> after",
           "duplicates": [{"id": "b" * 32, "url": "https://example.org/", "title": evil, "source": "Other",
                           "language": "en", "published": None}]}
    answer = {"total": 1, "articles": 2, "page": 1, "size": 20, "hits": [hit],
              "facets": {"language": [{"value": "fr", "count": 1}], "source": [{"value": evil, "count": 1}],
                         "tag": [{"value": evil, "count": 1}]},
              "timeline": [{"day": "2026-02-12", "count": 1}]}
    record = {**hit, "final_url": None, "canonical_url": hit["url"], "authors": [evil], "text": f"{evil}\nsecond",
              "tags": [{"topic": evil, "terms": {evil: 1}, "positions": [[0, 5]]}], "warnings": []}
    page.route("**/api/search?*", lambda route: route.fulfill(json=answer))
    page.route(f"**/api/articles/{hit['id']}", lambda route: route.fulfill(json=record))

    page.goto(api_server + "/?q=match")
    found = _hit(page, evil)
    expect(found.locator(".snippet")).to_have_text(f"before match <b>'{evil} <script>alert(3)</script> after")
    expect(found.locator(".snippet mark")).to_have_text("match")
    expect(found.get_by_role("group")).to_contain_text("1 other version")
    expect(page.get_by_role("group", name="Source")).to_contain_text(evil)
    found.get_by_role("link", name=evil).click()
    expect(page.locator("#article-title")).to_have_text(evil)
    expect(page.locator("#article-text")).to_contain_text(evil)
    expect(page.locator("#article-meta")).to_contain_text(evil)
    expect(page.locator("#article-link")).to_be_hidden()  # javascript: is not a link
    assert page.locator("img, #main script, [onerror]").count() == 0


def test_api_errors_are_shown(page: Page, api_server: str):
    page.goto(api_server + "/?q=otan&size=500")
    expect(page.get_by_role("alert")).to_contain_text("size")
    page.goto(api_server + "/?q=otan&article=" + "0" * 32)
    expect(page.get_by_role("alert")).to_contain_text("no article")
    expect(page.locator("#article-view").get_by_role("heading", level=2)).to_have_text("Article not available")
    page.get_by_role("link", name="Back to results").click()
    expect(page.locator("#result-count")).to_contain_text("match “otan”")
    expect(page.get_by_role("alert")).to_be_empty()


def test_token_required_shows_the_login_form(page: Page, api_server: str):
    # The demo server has no token: the browser's router plays the API's 401 answer.
    page.route("**/api/**", lambda route: route.fulfill(status=401, json={"error": "a bearer token is required"}))
    page.goto(api_server + "/?q=securite")
    login = page.get_by_role("region", name="Token required")
    expect(login).to_be_visible()
    expect(page.locator("#search-view")).to_be_hidden()
    expect(page.get_by_role("alert")).to_contain_text("token")
    expect(login.get_by_label("Access token")).to_have_attribute("type", "password")
    form = login.locator("form")
    expect(form).to_have_attribute("method", "post")
    expect(form).to_have_attribute("action", "/login")


def test_saved_search_and_alert_snippet(page: Page, api_server: str):
    page.goto(api_server + "/?q=otan&lang=fr")
    expect(page.locator("#result-count")).to_contain_text("match “otan”")
    page.get_by_label("Name", exact=True).fill("Browser NATO fr")
    page.get_by_role("button", name="Save this search").click()
    saved = page.get_by_role("complementary", name="Saved searches")
    entry = saved.get_by_role("link", name="Browser NATO fr")
    expect(entry).to_have_attribute("href", re.compile(r"^/\?q=otan&lang=fr"))

    page.get_by_role("button", name="Turn into alert").click()
    snippet = page.get_by_role("region", name="Alert subscription for this search")
    expect(snippet.locator("#alert-cli")).to_contain_text("newsmon alerts add Browser-NATO-fr")
    expect(snippet.locator("#alert-cli")).to_contain_text("--lang fr")
    expect(snippet.locator("#alert-yaml")).to_contain_text("subscribers:")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    snippet.get_by_role("button", name="Copy command").click()
    expect(page.get_by_role("status").filter(has_text="copied")).to_have_text("Command copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()").startswith("newsmon alerts add Browser-NATO-fr")

    page.goto(api_server + "/")
    entry.click()
    expect(page).to_have_url(re.compile(r"/\?q=otan&lang=fr"))
    expect(page.get_by_role("searchbox", name="Search articles")).to_have_value("otan")
    saved.get_by_role("button", name="Delete saved search “Browser NATO fr”").click()
    expect(entry).to_have_count(0)
