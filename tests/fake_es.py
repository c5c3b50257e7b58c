"""A stand-in Elasticsearch on 127.0.0.1 for the tests (no real cluster can run on CI machines).

It answers the endpoints newsmon and its tests call (``/``, ``_index_template``, index
creation and deletion, ``_alias``, ``_refresh``, ``_bulk``, ``_search``, ``_count``) with the response shapes of the Elasticsearch REST API
documentation, including bulk per-item errors, 429 and 503, and can be stopped and
restarted on the same port to play an outage. It checks date fields like a real
mapping would (a bad date is a ``document_parsing_exception`` for that item).

Search evaluates the query DSL subset newsmon sends (bool, multi_match best_fields /
phrase / phrase_prefix, terms, range, ids, match_all; sort, collapse, highlight, terms
aggregations) over accent-folded, lower-cased tokens; it does no stemming.
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
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
            return 200, _search(request, docs)
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
            meta = action["index"]
            index, doc_id = meta["_index"], meta["_id"]
            queued = self.item_statuses.get(doc_id)
            status = queued.pop(0) if queued else None
            if status is None:
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
            items.append({"index": item})
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


def _search(request: dict, docs: list) -> dict:
    matched = []
    for index, doc_id, doc in docs:
        ok, score = _matches(request.get("query", {"match_all": {}}), doc)
        if ok:
            matched.append((index, doc_id, doc, score))
    for key in reversed(request.get("sort", ["_score"])):
        if key == "_score":
            matched.sort(key=lambda m: m[3], reverse=True)
        else:
            (name, spec), = key.items()
            present = [m for m in matched if m[2]["__indexed"].get(name) is not None]
            missing = [m for m in matched if m[2]["__indexed"].get(name) is None]
            present.sort(key=lambda m: m[2]["__indexed"][name], reverse=spec.get("order") == "desc")
            matched = present + missing
    if "collapse" in request:
        seen, kept = set(), []
        for m in matched:
            value = m[2]["__indexed"].get(request["collapse"]["field"])
            if value not in seen:
                seen.add(value)
                kept.append(m)
        matched = kept
    aggregations = {}
    for name, agg in request.get("aggs", {}).items():
        counts: dict[str, int] = {}
        for m in matched:
            value = m[2]["__indexed"].get(agg["terms"]["field"], agg["terms"].get("missing"))
            for v in value if isinstance(value, list) else [value]:
                if v is not None:
                    counts[v] = counts.get(v, 0) + 1
        buckets = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: agg["terms"].get("size", 10)]
        aggregations[name] = {"doc_count_error_upper_bound": 0, "sum_other_doc_count": 0,
                              "buckets": [{"key": k, "doc_count": c} for k, c in buckets]}
    page = matched[request.get("from", 0): request.get("from", 0) + request.get("size", 10)]
    hits = []
    words = _query_words(request.get("query", {}))
    spec = request.get("highlight", {})
    for index, doc_id, doc, score in page:
        source = {k: v for k, v in doc.items() if k != "__indexed"}
        if isinstance(request.get("_source"), list):
            source = {k: v for k, v in source.items() if k in request["_source"]}
        hit = {"_index": index, "_id": doc_id, "_score": score, "_source": source}
        highlight = {}
        for name, options in spec.get("fields", {}).items():
            fragment = _highlight(str(doc.get(name) or ""), words, spec["pre_tags"][0], spec["post_tags"][0],
                                  options.get("fragment_size", 100), options.get("number_of_fragments", 5) == 0)
            if fragment:
                highlight[name] = [fragment]
        if highlight:
            hit["highlight"] = highlight
        hits.append(hit)
    return {
        "took": 2, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {"total": {"value": len(matched), "relation": "eq"},
                 "max_score": max((m[3] for m in matched), default=None), "hits": hits},
        "aggregations": aggregations,
    }
