"""Times as newsmon writes them: UTC ISO 8601 with a ``Z`` suffix and second precision, so that
they sort as plain text in SQLite, in JSON and in the search cluster alike."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    return to_iso(datetime.now(timezone.utc))


def to_iso(moment: datetime) -> str:
    """UTC ISO 8601 with a ``Z`` suffix and second precision (a naive time is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> datetime:
    """An ISO 8601 date or date-time (``Z`` or an offset; none means UTC) as an aware datetime;
    ValueError if it is not one."""
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def normalise_iso(value: str | None) -> str | None:
    """Any ISO 8601 date or date-time in newsmon's form, or None if it is missing or not one."""
    if not value:
        return None
    try:
        return to_iso(parse_iso(value))
    except ValueError:
        return None


def from_epoch(epoch: float) -> str:
    return to_iso(datetime.fromtimestamp(epoch, timezone.utc))


def to_epoch(iso: str) -> float:
    """Seconds since the epoch of an ISO 8601 time (naive means UTC); raises ValueError if it is not one."""
    return parse_iso(iso).timestamp()
