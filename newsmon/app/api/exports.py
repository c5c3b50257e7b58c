"""A whole query streamed as CSV or NDJSON, in chunks of ``EXPORT_BATCH`` rows: constant memory."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

EXPORT_BATCH = 500  # rows per chunk written to the socket
CSV_COLUMNS = ("id", "url", "title", "source", "language", "published", "tags", "story")


def csv_chunks(records: Iterator[dict]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for n, record in enumerate(records, 1):
        writer.writerow([" ".join(t["topic"] for t in record.get("tags", [])) if c == "tags" else record.get(c)
                         for c in CSV_COLUMNS])
        if n % EXPORT_BATCH == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def ndjson_chunks(records: Iterator[dict]) -> Iterator[bytes]:
    lines = []
    for record in records:
        lines.append(json.dumps(record, ensure_ascii=False))
        if len(lines) == EXPORT_BATCH:
            yield ("\n".join(lines) + "\n").encode()
            lines = []
    if lines:
        yield ("\n".join(lines) + "\n").encode()
