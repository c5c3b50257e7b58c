"""What a data directory's pipeline is doing, for ``newsmon stats`` and the demo's summary: backlog
per stage, dead letters, feeds, the index's counts, alerts, recent errors and warnings."""

from __future__ import annotations

import json

from ingest.feed_store import FeedStore
from newsmon.app.stages import SOURCE, STAGES, open_alerts, open_bus, open_index
from newsmon.bus import DEAD_LETTERS, Message
from newsmon.settings import Settings


def collect_stats(settings: Settings) -> dict:
    data = settings.data_dir
    stats: dict = {"data_dir": str(data), "bus": settings.pipeline.bus, "stages": {}, "dead_letters": 0,
                   "index": {}, "feeds": [], "recent_errors": [], "recent_warnings": []}
    if settings.pipeline.bus != "embedded" or (data / "queue.db").exists():
        bus = open_bus(settings)
        try:
            for stage, topic in STAGES.items():
                lag = bus.lag(stage, topic)
                stats["stages"][stage] = {"consumes": topic, "backlog": sum(lag.values()), "lag_per_partition": lag}
            stats["dead_letters"] = bus.size(DEAD_LETTERS)
            stats["recent_errors"] = [dead_letter_summary(m) for m in bus.recent(DEAD_LETTERS, 20)]
        finally:
            bus.close()
    if (data / "state.db").exists():
        store = FeedStore(data / "state.db")
        for state in store.all():
            stats["feeds"].append({"name": state.name, "url": state.url, "last_status": state.last_status,
                                   "failures": state.failures, "last_error": state.last_error,
                                   "new_last_poll": state.entries_new})
            if state.last_error:
                stats["recent_errors"].append({"at": None, "stage": SOURCE, "item": state.url,
                                               "reason": state.last_error})
        store.close()
    index = open_index(settings, writer=False)
    if index is not None:
        try:
            stats["index"] = {"articles": index.count(), **index.facets()}
            stats["recent_warnings"] = index.recent_warnings()
        finally:
            index.close()
    if (data / "alerts.db").exists():
        alert_log = open_alerts(settings, channels=False)
        stats["alerts"] = alert_log.status()
        alert_log.close(drain=0)
    return stats


def dead_letter_summary(message: Message) -> dict:
    h = message.headers
    return {"at": h.get("failed_at"), "stage": h.get("stage"), "item": _url_of(message.value) or message.key,
            "reason": h.get("error"), "source": f"{h.get('topic')}[{h.get('partition')}]@{h.get('offset')}",
            "attempts": int(h.get("attempts", "1"))}


def _url_of(raw: bytes) -> str | None:
    try:
        url = json.loads(raw).get("url")
    except (ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None
