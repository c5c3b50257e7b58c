"""A stand-in Elasticsearch on 127.0.0.1 for the tests (no real cluster can run on CI machines).

It answers the endpoints newsmon and its tests call (``/``, ``_index_template``, index
creation and deletion, ``_mapping``, ``_alias``, ``_refresh``, ``_bulk`` (index and partial
update), ``_search``, ``_count``) with the response shapes of the Elasticsearch REST API
documentation, including bulk per-item errors, 429 and 503, and can be stopped and
restarted on the same port to play an outage. It checks date fields like a real
mapping would (a bad date is a ``document_parsing_exception`` for that item).

Search evaluates the query DSL subset newsmon sends (bool, multi_match best_fields /
phrase / phrase_prefix, term, terms, range, ids, exists, match_all; sort with sort values
in the hits, search_after, collapse with inner_hits, highlight, _source filtering; terms,
date_histogram (by day) and cardinality aggregations, nested) over accent-folded,
lower-cased tokens; it does no stemming, and its cardinality is exact.
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cmp_to_key
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSIONS = {
    "es8": {"number": "8.15.3", "build_flavor": "default", "lucene_version": "9.11.1"},
    "es9": {"number": "9.1.0", "build_flavor": "default", "lucene_version": "10.2.2"},
    "opensearch2": {"distribution": "opensearch", "number": "2.17.1", "lucene_version": "9.11.1"},
    "es7": {"number": "7.17.0", "build_flavor": "default", "lucene_version": "8.11.1"},
}


def _error(kind: str, reason: str, status: int) -> dict:
    return {"error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason}, "status": status}


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()


def _tokens(text) -> list[str]:
    if isinstance(text, list):
        return [t for part in text for t in _tokens(part)]
    return re.findall(r"\w+", _fold(str(text or "")))


@dataclass
class FakeEs:
    flavor: str = "es8"
    templates: dict = field(default_factory=dict)
    indices: dict = field(default_factory=dict)  # name -> {id: source}
    aliases: dict = field(default_factory=dict)  # alias -> set of index names
    requests: list = field(default_factory=list)  # (method, path, body size in bytes)
    # Fault injection: statuses for the next whole requests to _bulk, and per-document item statuses.
    bulk_statuses: list = field(default_factory=list)
    item_statuses: dict = field(default_factory=dict)  # doc id -> list of statuses for its next attempts
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, port: int = 0) -> FakeEs:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with fake.lock:
                    fake.requests.append((self.command, self.path, len(body)))
                    status, payload = fake.handle(self.command, self.path.split("?")[0], body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if fake.flavor.startswith("es"):
                    self.send_header("X-elastic-product", "Elasticsearch")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Go down: further connections are refused until ``start(self.port)``."""
        self.server.shutdown()
        self.server.server_close()

    # -- inspection ----------------------------------------------------------------------------
    def documents(self) -> dict[str, dict]:
        """Every stored document by (index, id)."""
        return {(name, doc_id): doc for name, docs in self.indices.items() for doc_id, doc in docs.items()}

    # -- the API -------------------------------------------------------------------------------
    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        parts = [p for p in path.split("/") if p]
        if not parts:
            return 200, {"name": "fake-node", "cluster_name": "fake", "cluster_uuid": "x",
                         "version": VERSIONS[self.flavor], "tagline": "You Know, for Search"}
        if parts[0] == "_index_template" and len(parts) == 2:
            if method == "DELETE" and self.templates.pop(parts[1], None) is not None:
                return 200, {"acknowledged": True}
            if method == "PUT":
                self.templates[parts[1]] = json.loads(body)
                return 200, {"acknowledged": True}
            if parts[1] in self.templates:
                return 200, {"index_templates": [{"name": parts[1], "index_template": self.templates[parts[1]]}]}
            return 404, _error("resource_not_found_exception", f"index template matching [{parts[1]}] not found", 404)
        if parts[0] == "_bulk":
            return self._bulk(body)
        if len(parts) == 1 and method == "PUT":
            if parts[0] in self.indices:
                return 400, _error("resource_already_exists_exception", f"index [{parts[0]}/x] already exists", 400)
            self._create(parts[0])
            return 200, {"acknowledged": True, "shards_acknowledged": True, "index": parts[0]}
        if len(parts) == 1 and method == "DELETE" and parts[0] in self.indices:
            del self.indices[parts[0]]
            for members in self.aliases.values():
                members.discard(parts[0])
            return 200, {"acknowledged": True}
        if len(parts) == 2 and parts[1] == "_alias" and method == "GET":
            names = [n for n in self.indices if fnmatch.fnmatch(n, parts[0])]
            return 200, {n: {"aliases": {a: {} for a, members in self.aliases.items() if n in members}} for n in names}
        if len(parts) == 2 and parts[1] == "_mapping" and method == "PUT":  # fields are checked on the template only
            return 200, {"acknowledged": True}
        if len(parts) == 2 and parts[1] == "_refresh":
            return 200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}
        if len(parts) == 2 and parts[1] in ("_search", "_count"):
            names = self._resolve(parts[0])
            if names is None:
                return 404, _error("index_not_found_exception", f"no such index [{parts[0]}]", 404)
            request = json.loads(body) if body else {}
            docs = [(name, doc_id, doc) for name in names for doc_id, doc in self.indices[name].items()]
            if parts[1] == "_count":
                matched = [d for d in docs if _matches(request.get("query", {"match_all": {}}), d[2])[0]]
                return 200, {"count": len(matched), "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}
            dates = {name for template in self.templates.values()
                     for name, spec in template["template"]["mappings"]["properties"].items()
                     if spec.get("type") == "date"}
            return 200, _search(request, docs, dates)
        return 400, _error("illegal_argument_exception", f"fake does not implement {method} {path}", 400)

    def _template_for(self, index: str) -> dict:
        for template in self.templates.values():
            if any(fnmatch.fnmatch(index, pattern) for pattern in template["index_patterns"]):
                return template
        return {}

    def _create(self, index: str) -> None:
        self.indices[index] = {}
        for alias in self._template_for(index).get("template", {}).get("aliases", {}):
            self.aliases.setdefault(alias, set()).add(index)

    def _resolve(self, name: str) -> list[str] | None:
        if name in self.indices:
            return [name]
        if name in self.aliases:
            return sorted(self.aliases[name])
        return None

    def _bulk(self, body: bytes) -> tuple[int, dict]:
        if self.bulk_statuses:
            status = self.bulk_statuses.pop(0)
            if status == 429:
                return 429, _error("es_rejected_execution_exception",
                                   "rejected execution of coordinating operation [coordinating_and_primary_bytes=0]", 429)
            return status, _error("cluster_block_exception",
                                  "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered / initialized];", status)
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        items, errors = [], False
        for action, doc in zip(lines[::2], lines[1::2]):
            (kind, meta), = action.items()
            index, doc_id = meta["_index"], meta["_id"]
            queued = self.item_statuses.get(doc_id)
            status = queued.pop(0) if queued else None
            if status is None and kind == "update":
                status, error = self._update(index, doc_id, doc["doc"])
            elif status is None:
                status, error = self._store(index, doc_id, doc)
            else:
                error = {"type": "es_rejected_execution_exception", "reason": "rejected execution of primary operation"}
            item = {"_index": index, "_id": doc_id, "status": status}
            if error:
                errors = True
                item["error"] = {**error, "index_uuid": "aAsFqTI0Tc2W0LCWgPNrOA", "shard": "0", "index": index}
            else:
                item.update({"_version": 1, "result": "created" if status == 201 else "updated",
                             "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": 0, "_primary_term": 1})
            items.append({kind: item})
        return 200, {"took": 3, "errors": errors, "items": items}

    def _store(self, index: str, doc_id: str, doc: dict) -> tuple[int, dict | None]:
        template = self._template_for(index).get("template", {})
        properties = template.get("mappings", {}).get("properties", {})
        for name, spec in properties.items():
            if spec.get("type") == "date" and doc.get(name) is not None:
                try:
                    datetime.fromisoformat(str(doc[name]).replace("Z", "+00:00"))
                except ValueError:
                    return 400, {"type": "document_parsing_exception",
                                 "reason": f"[1:2] failed to parse field [{name}] of type [date] in document with id "
                                           f"'{doc_id}'. Preview of field's value: '{doc[name]}'"}
        if index not in self.indices:
            self._create(index)
        excludes = template.get("mappings", {}).get("_source", {}).get("excludes", [])
        stored = {k: v for k, v in doc.items() if not any(fnmatch.fnmatch(k, p) for p in excludes)}
        stored["__indexed"] = doc  # what the index sees, excluded fields included
        created = doc_id not in self.indices[index]
        self.indices[index][doc_id] = stored
        return (201 if created else 200), None

    def _update(self, index: str, doc_id: str, partial: dict) -> tuple[int, dict | None]:
        stored = self.indices.get(index, {}).get(doc_id)
        if stored is None:
            return 404, {"type": "document_missing_exception", "reason": f"[{doc_id}]: document missing"}
        stored.update(partial)
        stored["__indexed"].update(partial)
        return 200, None


# -- query evaluation --------------------------------------------------------------------------

def _field_values(doc: dict, pattern: str) -> list[tuple[str, float, object]]:
    name, _, boost = pattern.partition("^")
    indexed = doc["__indexed"]
    return [(key, float(boost or 1), value) for key, value in indexed.items() if fnmatch.fnmatch(key, name)]


def _phrase_at(tokens: list[str], phrase: list[str], prefix: bool) -> list[int]:
    hits = []
    for i in range(len(tokens) - len(phrase) + 1):
        head_ok = tokens[i:i + len(phrase) - 1] == phrase[:-1]
        last = tokens[i + len(phrase) - 1]
        if head_ok and (last.startswith(phrase[-1]) if prefix else last == phrase[-1]):
            hits.append(i)
    return hits


def _matches(query: dict, doc: dict) -> tuple[bool, float]:
    (kind, spec), = query.items()
    if kind == "match_all":
        return True, 1.0
    if kind == "bool":
        score = 0.0
        for clause in spec.get("must", []):
            ok, s = _matches(clause, doc)
            if not ok:
                return False, 0.0
            score += s
        for clause in spec.get("filter", []):
            if not _matches(clause, doc)[0]:
                return False, 0.0
        if any(_matches(clause, doc)[0] for clause in spec.get("must_not", [])):
            return False, 0.0
        should = [_matches(clause, doc) for clause in spec.get("should", [])]
        if should and sum(ok for ok, _ in should) < spec.get("minimum_should_match", 0):
            return False, 0.0
        return True, score + sum(s for ok, s in should if ok)
    if kind == "term":
        (name, value), = spec.items()
        return value in _values(doc, name), 0.0
    if kind == "exists":
        return bool(_values(doc, spec["field"])), 0.0
    if kind == "terms":
        (name, values), = spec.items()
        value = doc["__indexed"].get(name)
        present = value if isinstance(value, list) else [value]
        return any(v in values for v in present), 0.0
    if kind == "range":
        (name, bounds), = spec.items()
        value = doc["__indexed"].get(name)
        if value is None:
            return False, 0.0
        ok = all((op == "gte" and value >= b) or (op == "gt" and value > b) or (op == "lt" and value < b)
                 or (op == "lte" and value <= b) for op, b in bounds.items())
        return ok, 0.0
    if kind == "ids":
        return doc["__indexed"].get("id") in spec["values"], 0.0
    if kind == "multi_match":
        words = _tokens(spec["query"])
        best = 0.0
        for _, boost, value in [fv for pattern in spec["fields"] for fv in _field_values(doc, pattern)]:
            tokens = _tokens(value)
            if spec.get("type") in ("phrase", "phrase_prefix"):
                found = len(_phrase_at(tokens, words, spec["type"] == "phrase_prefix")) if words else 0
            else:
                found = sum(tokens.count(w) for w in words) if all(w in tokens for w in words) else 0
            best = max(best, found * boost)
        return best > 0, best
    raise ValueError(f"fake does not implement query {kind}")


def _highlight(text: str, words: set[str], pre: str, post: str, size: int, whole: bool) -> str | None:
    spans = [m for m in re.finditer(r"\w+", text) if _fold(m.group()) in words]
    if not spans:
        return None
    start = 0 if whole else max(0, spans[0].start() - size // 3)
    end = len(text) if whole else start + size
    out, pos = [], start
    for m in spans:
        if m.start() < start or m.end() > end:
            continue
        out += [text[pos:m.start()], pre, m.group(), post]
        pos = m.end()
    out.append(text[pos:end])
    return "".join(out)


def _query_words(query: dict) -> set[str]:
    words: set[str] = set()
    if isinstance(query, dict):
        for kind, spec in query.items():
            if kind == "multi_match":
                words |= set(_tokens(spec["query"]))
            elif kind == "must_not":
                continue
            else:
                words |= _query_words(spec)
    elif isinstance(query, list):
        for item in query:
            words |= _query_words(item)
    return words


def _values(doc: dict, name: str) -> list:
    value = doc["__indexed"].get(name)
    return [] if value is None else value if isinstance(value, list) else [value]


def _epoch_ms(stamp: str) -> int:
    moment = datetime.fromisoformat(stamp)
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)


@dataclass
class _Match:
    index: str
    id: str
    doc: dict
    score: float
    sort: list = field(default_factory=list)  # the hit's sort values, as Elasticsearch returns them


def _sort_keys(sort: list) -> list[tuple[str, dict]]:
    """(field, options) per sort clause: "_score", {"f": "asc"} and {"f": {"order": ...}} alike."""
    keys = []
    for clause in sort:
        name, spec = (clause, {}) if isinstance(clause, str) else next(iter(clause.items()))
        spec = {"order": spec} if isinstance(spec, str) else spec
        keys.append((name, {"order": "desc" if name == "_score" else "asc", **spec}))
    return keys


def _sort(matched: list[_Match], sort: list, dates: set[str]) -> list[_Match]:
    """Sorted, each with its sort values: dates in epoch milliseconds, and a missing value (a date, in what
    newsmon sorts on) as Elasticsearch puts it last: the smallest long descending, the largest ascending."""
    keys = _sort_keys(sort)
    for m in matched:
        m.sort = []
        for name, spec in keys:
            value = m.score if name == "_score" else m.doc["__indexed"].get(name)
            if value is None:
                value = -2**63 if spec["order"] == "desc" else 2**63 - 1
            elif name in dates:
                value = _epoch_ms(value)
            m.sort.append(value)
    return sorted(matched, key=cmp_to_key(lambda a, b: _compare(a.sort, b.sort, keys)))


def _compare(a: list, b: list, keys: list[tuple[str, dict]]) -> int:
    for x, y, (_, spec) in zip(a, b, keys):
        if x != y:
            return (1 if x > y else -1) * (-1 if spec["order"] == "desc" else 1)
    return 0


def _source(doc: dict, spec) -> dict | None:
    source = {k: v for k, v in doc.items() if k != "__indexed"}
    if spec is False:
        return None
    if isinstance(spec, list):
        return {k: v for k, v in source.items() if k in spec}
    if isinstance(spec, dict):
        return {k: v for k, v in source.items() if not any(fnmatch.fnmatch(k, p) for p in spec.get("excludes", []))}
    return source


def _hit(m: _Match, request: dict) -> dict:
    scored = "sort" not in request or "_score" in request["sort"]
    hit = {"_index": m.index, "_id": m.id, "_score": m.score if scored else None}
    source = _source(m.doc, request.get("_source"))
    if source is not None:
        hit["_source"] = source
    if "sort" in request:
        hit["sort"] = m.sort
    return hit


def _aggregate(aggs: dict, docs: list[dict]) -> dict:
    out = {}
    for name, agg in aggs.items():
        sub = agg.get("aggs", {})
        if "cardinality" in agg:
            out[name] = {"value": len({v for doc in docs for v in _values(doc, agg["cardinality"]["field"])})}
        elif "terms" in agg:
            spec = agg["terms"]
            groups: dict = {}
            for doc in docs:
                for value in _values(doc, spec["field"]) or ([spec["missing"]] if "missing" in spec else []):
                    groups.setdefault(value, []).append(doc)
            buckets = [{"key": key, "doc_count": len(members), **_aggregate(sub, members)}
                       for key, members in groups.items()]
            order = spec.get("order", [{"_count": "desc"}, {"_key": "asc"}])
            for criterion in reversed(order if isinstance(order, list) else [order]):  # stable: last criterion first
                (by, direction), = criterion.items()
                buckets.sort(key=lambda b: b["doc_count"] if by == "_count" else b["key"] if by == "_key"
                             else b[by]["value"], reverse=direction == "desc")
            size = spec.get("size", 10)
            out[name] = {"doc_count_error_upper_bound": 0,
                         "sum_other_doc_count": sum(b["doc_count"] for b in buckets[size:]), "buckets": buckets[:size]}
        elif "date_histogram" in agg:
            spec = agg["date_histogram"]
            assert spec["calendar_interval"] == "day", "the fake buckets by day only"
            days: dict = {}
            for doc in docs:
                for value in _values(doc, spec["field"]):
                    day = datetime.fromtimestamp(_epoch_ms(value) / 1000, UTC).strftime("%Y-%m-%d")
                    days.setdefault(day, []).append(doc)
            out[name] = {"buckets": [
                {"key_as_string": day if spec.get("format") == "yyyy-MM-dd" else f"{day}T00:00:00.000Z",
                 "key": _epoch_ms(day), "doc_count": len(members), **_aggregate(sub, members)}
                for day, members in sorted(days.items()) if len(members) >= spec.get("min_doc_count", 0)]}
        else:
            raise ValueError(f"fake does not implement aggregation {agg}")
    return out


def _search(request: dict, docs: list, dates: set[str]) -> dict:
    matched = []
    for index, doc_id, doc in docs:
        ok, score = _matches(request.get("query", {"match_all": {}}), doc)
        if ok:
            matched.append(_Match(index, doc_id, doc, score))
    matched = _sort(matched, request.get("sort", ["_score"]), dates)
    aggregations = _aggregate(request.get("aggs", {}), [m.doc for m in matched])  # before collapsing, as in ES
    total = len(matched)  # articles, not groups
    top, groups = matched, {}
    if "collapse" in request:
        for m in matched:  # every document without a value lands in the one group of None, as in ES
            groups.setdefault(m.doc["__indexed"].get(request["collapse"]["field"]), []).append(m)
        top = [members[0] for members in groups.values()]
    if "search_after" in request:
        keys = _sort_keys(request["sort"])
        top = [m for m in top if _compare(m.sort, request["search_after"], keys) > 0]
    page = top[request.get("from", 0): request.get("from", 0) + request.get("size", 10)]
    hits = []
    words = _query_words(request.get("query", {}))
    spec = request.get("highlight", {})
    for m in page:
        hit = _hit(m, request)
        highlight = {}
        for name, options in spec.get("fields", {}).items():
            fragment = _highlight(str(m.doc.get(name) or ""), words, spec["pre_tags"][0], spec["post_tags"][0],
                                  options.get("fragment_size", 100), options.get("number_of_fragments", 5) == 0)
            if fragment:
                highlight[name] = [fragment]
        if highlight:
            hit["highlight"] = highlight
        if "collapse" in request:
            key = m.doc["__indexed"].get(request["collapse"]["field"])
            hit["fields"] = {request["collapse"]["field"]: [key]}
            for inner in [request["collapse"]["inner_hits"]] if "inner_hits" in request["collapse"] else []:
                copies = [_Match(g.index, g.id, g.doc, g.score) for g in groups[key]]  # their own sort values
                members = _sort(copies, inner.get("sort", ["_score"]), dates)
                start = inner.get("from", 0)
                hit["inner_hits"] = {inner["name"]: {"hits": {
                    "total": {"value": len(members), "relation": "eq"},
                    "max_score": max((g.score for g in members), default=None),
                    "hits": [_hit(g, inner) for g in members[start: start + inner.get("size", 3)]],
                }}}
        hits.append(hit)
    body = {"max_score": max((m.score for m in matched), default=None), "hits": hits}
    if request.get("track_total_hits", True) is not False:
        body = {"total": {"value": total, "relation": "eq"}, **body}
    return {
        "took": 2, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": body, "aggregations": aggregations,
    }
