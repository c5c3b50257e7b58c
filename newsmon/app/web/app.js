// The analyst page: search, facets, timeline, article view, exports, saved searches, alert snippets.
//
// All state lives in the query string of "/" so every view is a shareable link and back/forward
// work: navigate() pushes a URL and render() draws whatever the URL says. Data from the API is
// put into the page with textContent only; the one exception is a hit's `snippet`, which the API
// sends as escaped text with <mark> — and even that is never parsed as HTML (trustedSnippet).

const LIST_PARAMS = ["lang", "source", "tag"];
const PARAM_ORDER = ["q", "lang", "source", "tag", "since", "until", "sort", "page", "size", "article"];
const DEFAULT_SIZE = 20;
const MAX_WINDOW = 10000; // the API refuses page * size beyond this

const $ = (selector, root = document) => root.querySelector(selector);
const dateFormat = new Intl.DateTimeFormat("en-GB", { day: "numeric", month: "short", year: "numeric", timeZone: "UTC" });
const dateTimeFormat = new Intl.DateTimeFormat("en-GB", {
  day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit", timeZone: "UTC", timeZoneName: "short",
});
const languageNames = safely(() => new Intl.DisplayNames(["en"], { type: "language" }));

// ---------------------------------------------------------------------------------------------
// URL state

function readState(search = location.search) {
  const params = new URLSearchParams(search);
  const state = {};
  for (const name of PARAM_ORDER) {
    state[name] = LIST_PARAMS.includes(name) ? params.getAll(name) : params.get(name) ?? "";
  }
  return state;
}

/** URLSearchParams of a state, in a stable order, without empty values, defaults or `omit`. */
function toParams(state, omit = []) {
  const params = new URLSearchParams();
  for (const name of PARAM_ORDER) {
    if (omit.includes(name)) continue;
    const value = state[name];
    if (Array.isArray(value)) value.forEach((v) => params.append(name, v));
    else if (value && !(name === "page" && value === "1")) params.append(name, value);
  }
  return params;
}

const pageUrl = (state) => {
  const query = toParams(state).toString();
  return query ? `/?${query}` : "/";
};
const searchState = (state) => ({ ...state, article: "" });
const filtersActive = (state) => LIST_PARAMS.some((n) => state[n].length) || state.since || state.until;

// ---------------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "The newsmon server cannot be reached. Is `newsmon serve` running?");
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (response.status === 401) {
    showLogin();
    throw new ApiError(401, "This server needs an access token: sign in below.");
  }
  if (!response.ok) throw new ApiError(response.status, data?.error || `The server answered ${response.status} ${response.statusText}.`);
  return data;
}

// ---------------------------------------------------------------------------------------------
// Rendering: one render() per URL; `generation` drops answers that arrive after a newer navigation.

let generation = 0;
let inFlight = null;
let lastArticle = ""; // focus returns to its link when coming back to the results

async function render({ focus } = {}) {
  const state = readState();
  const mine = ++generation;
  inFlight?.abort();
  inFlight = new AbortController();
  const { signal } = inFlight;
  fillSearchForm(state);
  showError("");
  const articleMode = Boolean(state.article);
  $("#search-view").hidden = articleMode;
  $("#article-view").hidden = !articleMode;
  try {
    if (articleMode) {
      await renderArticle(state, signal, () => mine === generation);
      if (mine === generation && focus !== "none") $("#article-title").focus();
    } else {
      await renderSearch(state, signal, () => mine === generation);
      if (mine === generation) restoreFocus(focus);
    }
  } catch (error) {
    if (error.name === "AbortError" || mine !== generation) return;
    showError(error.message);
    if (articleMode) {
      clearArticle();
    } else {
      $("#results").removeAttribute("aria-busy");
      $("#result-count").textContent = "";
    }
  }
}

function restoreFocus(focus) {
  if (focus === "results") {
    $("#results-heading").focus();
  } else if (focus?.startsWith("key:")) {
    // A facet checkbox that was re-drawn: put focus back on its replacement.
    document.querySelector(`[data-key="${CSS.escape(focus.slice(4))}"]`)?.focus();
  } else if (focus === "last-article" && lastArticle) {
    document.querySelector(`#hits a[data-id="${CSS.escape(lastArticle)}"]`)?.focus();
  }
}

function navigate(state, { focus, historyState = null } = {}) {
  history.pushState(historyState, "", pageUrl(state));
  render({ focus });
}

function showError(message) {
  $("#error").textContent = message;
}

function showLogin() {
  $("#login").hidden = false;
  $("#search-view").hidden = true;
  $("#article-view").hidden = true;
}

function fillSearchForm(state) {
  $("#q").value = state.q;
  fillDate($("#since"), state.since);
  fillDate($("#until"), state.until);
  $("#sort").value = state.sort || (state.q ? "relevance" : "date");
}

/**
 * A date field shows YYYY-MM-DD; a saved search's "2026-02-01T00:00:00Z" is that day. A moment
 * the field cannot show (another time of day) is kept as is rather than silently dropped.
 */
function fillDate(input, value) {
  const day = /^\d{4}-\d{2}-\d{2}/.exec(value)?.[0] ?? "";
  const wholeDay = value === day || /^\d{4}-\d{2}-\d{2}T00:00(:00(\.0+)?)?(Z|[+-]00:?00)?$/.test(value);
  input.value = wholeDay ? day : "";
  input.dataset.kept = wholeDay ? "" : value;
}

const dateValue = (input) => input.value || input.dataset.kept || "";

// ---------------------------------------------------------------------------------------------
// Search results

async function renderSearch(state, signal, current) {
  $("#results").setAttribute("aria-busy", "true");
  $("#alert-snippet").hidden = true; // it described the previous search
  status("");
  const data = await api(`/api/search?${toParams(state, ["article"])}`, { signal });
  if (!current()) return;
  $("#results").removeAttribute("aria-busy");
  document.title = state.q ? `${state.q} — newsmon` : "newsmon";
  $("#result-count").textContent = countText(data, state);
  renderFacets(data.facets || {}, state);
  renderTimeline(data.timeline || []);
  renderHits(data.hits || [], state);
  renderPagination(data, state);
  const exportQuery = toParams(state, ["page", "size", "article"]).toString();
  $("#export-csv").href = `/api/search.csv${exportQuery ? "?" + exportQuery : ""}`;
  $("#export-ndjson").href = `/api/search.ndjson${exportQuery ? "?" + exportQuery : ""}`;
}

function countText({ total, articles }, state) {
  const what = state.q ? ` match “${state.q}”` : filtersActive(state) ? " match the filters" : " in the index";
  if (!total) return state.q || filtersActive(state) ? `No stories${what}.` : "No articles indexed yet.";
  const stories = `${total.toLocaleString("en")} ${total === 1 ? "story" : "stories"}`;
  const copies = articles > total ? ` (${articles.toLocaleString("en")} articles)` : "";
  return `${stories}${copies}${what}.`;
}

function renderFacets(facets, state) {
  for (const fieldset of document.querySelectorAll("#filters .facet")) {
    const param = fieldset.dataset.param;
    const values = [...(facets[fieldset.dataset.facet] || [])];
    // A selected value stays visible (and untickable) even when the other filters leave it no matches.
    for (const selected of state[param]) {
      if (!values.some((v) => v.value === selected)) values.push({ value: selected, count: 0 });
    }
    const list = $(".facet-values", fieldset);
    list.replaceChildren(...values.map(({ value, count }) => facetItem(param, value, count, state[param].includes(value))));
    fieldset.hidden = values.length === 0;
  }
  const active = $("#active-filters");
  active.replaceChildren();
  if (filtersActive(state)) {
    const clear = document.createElement("button");
    clear.type = "button";
    clear.className = "link-button";
    clear.textContent = "Clear all filters";
    clear.addEventListener("click", () => {
      navigate({ ...searchState(state), lang: [], source: [], tag: [], since: "", until: "", page: "" }, { focus: "results" });
    });
    active.append(clear);
  }
}

function facetItem(param, value, count, checked) {
  const item = document.createElement("li");
  const label = document.createElement("label");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.name = param;
  box.value = value;
  box.checked = checked;
  box.dataset.key = `${param}:${value}`;
  const name = textElement("span", param === "lang" ? languageLabel(value) : value, "facet-name");
  const number = textElement("span", count.toLocaleString("en"), "count");
  number.append(textElement("span", count === 1 ? " story" : " stories", "visually-hidden"));
  label.append(box, name, number);
  item.append(label);
  return item;
}

function languageLabel(code) {
  if (!code || code === "und") return "unknown";
  const name = safely(() => languageNames?.of(code));
  return name && name !== code ? `${name} (${code})` : code;
}

function renderHits(hits, state) {
  const template = $("#hit-template");
  const items = hits.map((hit) => {
    const item = template.content.firstElementChild.cloneNode(true);
    const link = $(".hit-title a", item);
    link.textContent = hit.title || hit.url;
    link.href = pageUrl({ ...state, article: hit.id });
    link.dataset.nav = "article";
    link.dataset.id = hit.id;
    $(".hit-meta", item).append(...metaLine(hit));
    $(".snippet", item).append(trustedSnippet(hit.snippet || ""));
    inLanguage(hit.language, $(".hit-title", item), $(".snippet", item));
    $(".tags", item).append(...(hit.tags || []).map((tag) => textElement("li", tag)));
    if (!hit.tags?.length) $(".tags", item).remove();
    const duplicates = hit.duplicates || [];
    if (duplicates.length) {
      const versions = $(".versions", item);
      versions.hidden = false;
      $("summary", versions).textContent = `${duplicates.length} other version${duplicates.length === 1 ? "" : "s"}`;
      $(".dup-list", versions).append(...duplicates.map((dup) => duplicateItem(dup, state)));
    }
    return item;
  });
  $("#hits").replaceChildren(...items);
}

/** "Source · Language · date" as nodes. */
function metaLine(article) {
  const parts = [];
  if (article.source) parts.push(textElement("span", article.source, "source"));
  if (article.language) parts.push(textElement("span", languageLabel(article.language)));
  if (article.published) parts.push(timeElement(article.published, dateFormat));
  return parts.flatMap((part, i) => (i ? [document.createTextNode(" · "), part] : [part]));
}

function duplicateItem(dup, state) {
  const item = document.createElement("li");
  const link = textElement("a", dup.title || dup.url);
  link.href = pageUrl({ ...state, article: dup.id });
  link.dataset.nav = "article";
  link.dataset.id = dup.id;
  const meta = textElement("span", "", "dup-meta");
  meta.append(...metaLine(dup));
  item.append(link, " ", meta);
  return item;
}

/**
 * The API's snippet is escaped text with <mark> around matches. It is never parsed as HTML (not even
 * in an inert document: Chromium still compiles event handler attributes there): <mark> pairs become
 * elements, the rest is unescaped into text, so a server bug shows tags instead of running them.
 */
function trustedSnippet(html) {
  const fragment = document.createDocumentFragment();
  for (const part of html.split(/(<mark>[\s\S]*?<\/mark>)/)) {
    const marked = /^<mark>([\s\S]*)<\/mark>$/.exec(part);
    if (marked) fragment.append(textElement("mark", unescapeHtml(marked[1])));
    else if (part) fragment.append(unescapeHtml(part));
  }
  return fragment;
}

const ENTITIES = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: "\u00a0" };

function unescapeHtml(text) {
  return text.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (entity, name) => {
    if (!name.startsWith("#")) return ENTITIES[name.toLowerCase()] ?? entity;
    const code = /^#x/i.test(name) ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
    return code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : entity;
  });
}

function renderPagination({ total, page, size }, state) {
  const nav = $("#pagination");
  size = size || DEFAULT_SIZE;
  const pages = Math.max(1, Math.min(Math.ceil(total / size), Math.floor(MAX_WINDOW / size)));
  page = page || 1;
  nav.hidden = pages <= 1;
  $("#page-info").textContent = `Page ${page} of ${pages}`;
  pageLink($("#page-prev"), page > 1 ? { ...state, page: String(page - 1) } : null);
  pageLink($("#page-next"), page < pages ? { ...state, page: String(page + 1) } : null);
}

function pageLink(link, state) {
  // Without href an <a> is not focusable nor clickable: the honest "disabled" link.
  if (state) {
    link.href = pageUrl(state);
    link.dataset.nav = "page";
    link.removeAttribute("aria-disabled");
  } else {
    link.removeAttribute("href");
    link.setAttribute("aria-disabled", "true");
  }
}

// ---------------------------------------------------------------------------------------------
// Timeline: an inline SVG bar per day (zero days included so gaps show), with a table for
// screen readers and a one-line summary.

const SVG = "http://www.w3.org/2000/svg";

function renderTimeline(timeline) {
  const figure = $("#timeline");
  figure.hidden = timeline.length === 0;
  if (!timeline.length) return;
  const days = fillDays(timeline);
  const max = Math.max(...days.map((d) => d.count));
  const peaks = days.filter((d) => d.count === max);
  const barWidth = 10;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${days.length * barWidth} 100`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-labelledby", "timeline-caption");
  const span = days.length === 1 ? formatDay(days[0].day) : `${formatDay(days[0].day)} to ${formatDay(days.at(-1).day)}`;
  const busiest = peaks.length === 1 ? `busiest ${formatDay(peaks[0].day)} with ${storyCount(max)}` : `at most ${storyCount(max)} a day`;
  const summary = `${span}; ${busiest}.`;
  days.forEach(({ day, count }, i) => {
    const height = count ? Math.max(4, (count / max) * 96) : 0;
    const bar = document.createElementNS(SVG, "rect");
    bar.setAttribute("x", String(i * barWidth + 1));
    bar.setAttribute("y", String(100 - height));
    bar.setAttribute("width", String(barWidth - 2));
    bar.setAttribute("height", String(height));
    bar.setAttribute("class", "bar");
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${formatDay(day)}: ${storyCount(count)}`;
    bar.append(title);
    svg.append(bar);
  });
  const axis = document.createElement("div");
  axis.className = "timeline-axis";
  axis.setAttribute("aria-hidden", "true");
  axis.append(textElement("span", formatDay(days[0].day)), textElement("span", `peak: ${storyCount(max)}`), textElement("span", formatDay(days.at(-1).day)));
  $("#timeline-chart").replaceChildren(svg, axis);
  $("#timeline-caption").textContent = `Matching stories per day — ${summary}`;
  $("#timeline-table tbody").replaceChildren(...timeline.map(({ day, count }) => {
    const row = document.createElement("tr");
    row.append(textElement("td", formatDay(day)), textElement("td", String(count)));
    return row;
  }));
}

/** The timeline's days with the missing ones in between as zero (for ranges up to about a year). */
function fillDays(timeline) {
  const sorted = [...timeline].filter((d) => /^\d{4}-\d{2}-\d{2}$/.test(d.day)).sort((a, b) => a.day.localeCompare(b.day));
  if (sorted.length < 2) return sorted.length ? sorted : timeline;
  const start = Date.parse(sorted[0].day), end = Date.parse(sorted.at(-1).day);
  const span = Math.round((end - start) / 86400000);
  if (span > 400) return sorted;
  const counts = new Map(sorted.map((d) => [d.day, d.count]));
  return Array.from({ length: span + 1 }, (_, i) => {
    const day = new Date(start + i * 86400000).toISOString().slice(0, 10);
    return { day, count: counts.get(day) || 0 };
  });
}

const formatDay = (day) => safely(() => dateFormat.format(new Date(`${day}T00:00:00Z`))) || day;
const storyCount = (n) => `${n} ${n === 1 ? "story" : "stories"}`;

// ---------------------------------------------------------------------------------------------
// Article view

async function renderArticle(state, signal, current) {
  $("#article-back").href = pageUrl(searchState(state));
  const article = await api(`/api/articles/${encodeURIComponent(state.article)}`, { signal });
  if (!current()) return;
  lastArticle = article.id;
  document.title = `${article.title || "Article"} — newsmon`;
  $("#article-title").textContent = article.title || "(no title)";
  inLanguage(article.language, $("#article-title"), $("#article-text"));
  renderArticleMeta(article);
  const link = $("#article-link");
  const original = safeUrl(article.final_url) || safeUrl(article.url);
  link.hidden = !original;
  if (original) {
    link.href = original;
    link.textContent = `Read the original on ${new URL(original).hostname}`;
  }
  const tags = article.tags || [];
  $("#article-tags").replaceChildren(...(tags.length ? tags.map(tagItem) : [textElement("li", "No topic matched.", "muted")]));
  const warnings = article.warnings || [];
  $("#article-warnings").hidden = !warnings.length;
  $("#article-warnings ul").replaceChildren(...warnings.map((w) => textElement("li", [w.stage, w.reason].filter(Boolean).join(": "))));
  $("#article-text").replaceChildren(markedText(article.text || "", tags));
  const duplicates = article.duplicates || [];
  $("#article-dups").hidden = !duplicates.length;
  $("#article-dups ul").replaceChildren(...duplicates.map((dup) => duplicateItem(dup, state)));
}

/** After a failed load: no stale article left on screen under the error message. */
function clearArticle() {
  document.title = "Article not available — newsmon";
  $("#article-title").textContent = "Article not available";
  for (const id of ["#article-meta", "#article-tags", "#article-text", "#article-dups ul", "#article-warnings ul"]) {
    $(id).replaceChildren();
  }
  $("#article-link").hidden = $("#article-dups").hidden = $("#article-warnings").hidden = true;
}

function renderArticleMeta(article) {
  const rows = [
    ["Source", article.source],
    ["Published", article.published && timeElement(article.published, dateTimeFormat)],
    ["Language", article.language && languageLabel(article.language) +
      (typeof article.language_confidence === "number" ? ` · ${Math.round(article.language_confidence * 100)}% confidence` : "")],
    ["Authors", (article.authors || []).join(", ")],
    ["Fetched", article.fetched && timeElement(article.fetched, dateTimeFormat)],
  ];
  $("#article-meta").replaceChildren(...rows.filter(([, value]) => value).flatMap(([term, value]) => {
    const dd = document.createElement("dd");
    dd.append(value);
    return [textElement("dt", term), dd];
  }));
}

function tagItem(tag) {
  const item = document.createElement("li");
  item.append(textElement("strong", tag.topic));
  const terms = Object.entries(tag.terms || {}).sort((a, b) => b[1] - a[1]);
  if (terms.length) item.append(" — ", terms.map(([term, n]) => `${term} ×${n}`).join(", "));
  return item;
}

/**
 * The article text as paragraphs (one per line of the extracted text) with the tagger's matched
 * terms marked. Positions are offsets in code points (Python's str), hence Array.from.
 */
function markedText(text, tags) {
  const chars = Array.from(text);
  const ranges = tags.flatMap((tag) => (tag.positions || []).map(([start, end]) => ({ start, end, topic: tag.topic })))
    .filter((r) => Number.isInteger(r.start) && Number.isInteger(r.end) && r.start >= 0 && r.start < r.end && r.end <= chars.length)
    .sort((a, b) => a.start - b.start);
  const pieces = []; // [text, topic or null]
  let at = 0;
  for (const { start, end, topic } of ranges) {
    if (start < at) continue; // overlapping matches: the first one wins
    pieces.push([chars.slice(at, start).join(""), null], [chars.slice(start, end).join(""), topic]);
    at = end;
  }
  pieces.push([chars.slice(at).join(""), null]);

  const fragment = document.createDocumentFragment();
  let paragraph = document.createElement("p");
  const flush = () => {
    if (paragraph.textContent.trim()) fragment.append(paragraph);
    paragraph = document.createElement("p");
  };
  for (const [piece, topic] of pieces) {
    piece.split(/\n+/).forEach((part, i) => {
      if (i) flush();
      if (!part) return;
      if (topic) {
        const mark = textElement("mark", part, "term");
        mark.title = `topic: ${topic}`;
        paragraph.append(mark);
      } else {
        paragraph.append(part);
      }
    });
  }
  flush();
  return fragment;
}

/** Only http(s) URLs become links: a feed could carry javascript: or data: URLs. */
function safeUrl(value) {
  if (!value) return null;
  const url = safely(() => new URL(value, location.href));
  return url && (url.protocol === "http:" || url.protocol === "https:") ? url.href : null;
}

// ---------------------------------------------------------------------------------------------
// Saved searches and alert snippets

async function loadSaved() {
  try {
    const data = await api("/api/saved-searches");
    renderSaved(data.saved_searches || []);
  } catch (error) {
    if (error.status !== 401) $("#saved-empty").textContent = `Saved searches are unavailable: ${error.message}`;
  }
}

function renderSaved(saved) {
  $("#saved-empty").hidden = saved.length > 0;
  $("#saved-list").replaceChildren(...saved.map((entry) => {
    const item = document.createElement("li");
    const link = textElement("a", entry.name);
    link.href = savedUrl(entry);
    link.dataset.nav = "saved";
    const remove = textElement("button", "Delete", "link-button");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete saved search “${entry.name}”`);
    remove.addEventListener("click", () => deleteSaved(entry));
    item.append(link, remove);
    return item;
  }));
}

/** The server's link for a saved search, if it is a path on this site; else one built from its params. */
function savedUrl(entry) {
  if (typeof entry.url === "string" && entry.url.startsWith("/") && !entry.url.startsWith("//")) return entry.url;
  const p = entry.params || {};
  return pageUrl({ ...readState(""), ...p, lang: p.lang || [], source: p.source || [], tag: p.tag || [], since: p.since || "", until: p.until || "" });
}

async function deleteSaved(entry) {
  try {
    await api(`/api/saved-searches/${encodeURIComponent(entry.id)}`, { method: "DELETE" });
    status(`Deleted “${entry.name}”.`);
    await loadSaved();
    $("#saved-heading").focus(); // the button that had focus is gone
  } catch (error) {
    showError(error.message);
  }
}

async function saveSearch(state, name) {
  const body = {
    name, q: state.q, lang: state.lang, source: state.source, tag: state.tag,
    since: state.since || null, until: state.until || null, sort: state.sort || null,
  };
  const saved = await api("/api/saved-searches", { method: "POST", body });
  status(`Saved “${saved.name}”.`);
  await loadSaved();
}

async function showAlertSnippet(state, name, { focus = true } = {}) {
  const params = toParams({ ...readState(""), q: state.q, lang: state.lang, source: state.source, tag: state.tag });
  params.append("name", alertName(name || suggestedName(state)));
  const channel = $("#alert-channel").value.trim();
  if (channel) params.append("channel", channel);
  const snippet = await api(`/api/alert-snippet?${params}`);
  $("#alert-cli").textContent = snippet.cli;
  $("#alert-yaml").textContent = snippet.yaml;
  $("#alert-snippet").hidden = false;
  if (focus) $("#alert-heading").focus();
}

/** Subscriber names are identifiers (letters, digits, _ . @ -): "NATO fr" becomes "NATO-fr". */
function alertName(name) {
  const slug = name.normalize("NFKD").replace(/[\u0300-\u036f]/g, "").replace(/[^A-Za-z0-9_.@-]+/g, "-")
    .replace(/^[^A-Za-z0-9]+|-+$/g, "").slice(0, 64);
  return slug || "my-alert";
}

/** A name for a search the analyst did not name: its words and filters. */
function suggestedName(state) {
  return [state.q, ...state.lang, ...state.source, ...state.tag].filter(Boolean).join(" ").slice(0, 100) || "all articles";
}

async function copyFrom(pre, what) {
  try {
    await navigator.clipboard.writeText(pre.textContent);
  } catch {
    // No clipboard API (plain http on a non-local host): select the text so Ctrl+C copies it.
    const range = document.createRange();
    range.selectNodeContents(pre);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    status("Selected: press Ctrl+C (⌘C) to copy.");
    return;
  }
  status(`${what} copied to the clipboard.`);
}

function status(message) {
  $("#keep-status").textContent = message;
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/** Mark article text with its language (screen readers pronounce it right) and direction. */
function inLanguage(language, ...elements) {
  for (const element of elements) {
    if (language && language !== "und") element.lang = language;
    else element.removeAttribute("lang");
    element.dir = "auto";
  }
}

function textElement(tag, text, className) {
  const element = document.createElement(tag);
  element.textContent = text;
  if (className) element.className = className;
  return element;
}

function timeElement(iso, format) {
  const element = textElement("time", safely(() => format.format(new Date(iso))) || iso);
  element.dateTime = iso;
  return element;
}

function safely(make) {
  try {
    return make();
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring (no inline handlers: the page runs under Content-Security-Policy default-src 'self')

$("#search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const current = readState();
  const q = $("#q").value.trim();
  // A sort chosen in the select stays; the default for the new query stays out of the URL.
  const sort = current.sort === (q ? "relevance" : "date") ? "" : current.sort;
  navigate({ ...searchState(current), q, since: dateValue($("#since")), until: dateValue($("#until")), page: "", sort },
    { focus: "none" });
});

$("#sort").addEventListener("change", () => {
  const current = searchState(readState());
  navigate({ ...current, sort: $("#sort").value, page: "" }, { focus: "key:sort" });
});

$("#filters").addEventListener("change", (event) => {
  const box = event.target;
  if (box.type !== "checkbox") return;
  const current = searchState(readState());
  const values = current[box.name].filter((v) => v !== box.value);
  if (box.checked) values.push(box.value);
  navigate({ ...current, [box.name]: values, page: "" }, { focus: `key:${box.dataset.key}` });
});

// In-page links (results, pages, saved searches, back) navigate without reloading; modified
// clicks (new tab, etc.) keep the browser's behaviour since every href is a real URL.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-nav]");
  if (!link || !link.href || event.defaultPrevented || event.button !== 0 ||
      event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  const target = new URL(link.href);
  if (link.id === "article-back" && history.state?.fromResults) {
    history.back(); // the results page is the previous entry: go back to it (scroll restored)
    return;
  }
  const kind = link.dataset.nav;
  navigate(readState(target.search), {
    focus: kind === "page" || kind === "saved" ? "results" : kind === "back" ? "last-article" : undefined,
    historyState: kind === "article" && !readState().article ? { fromResults: true } : null,
  });
});

$("#keep-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const state = searchState(readState());
  const name = $("#search-name").value.trim();
  status("");
  showError("");
  try {
    if (event.submitter?.value === "alert") await showAlertSnippet(state, name);
    else await saveSearch(state, name || suggestedName(state));
  } catch (error) {
    showError(error.message);
  }
});

$("#channel-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  try {
    await showAlertSnippet(searchState(readState()), $("#search-name").value.trim(), { focus: false });
    status("Snippet updated for this channel.");
  } catch (error) {
    showError(error.message);
  }
});

for (const button of document.querySelectorAll("button[data-copy]")) {
  button.addEventListener("click", () => copyFrom(document.getElementById(button.dataset.copy), button.dataset.what));
}

window.addEventListener("popstate", () => render({ focus: "last-article" }));

render({ focus: "none" });
loadSaved();
