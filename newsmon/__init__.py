"""newsmon: streaming news monitoring.

The shared plumbing lives here (record schema, bus, stage runner, settings, CLI);
the stages themselves live in ``ingest``, ``enrich`` and ``sinks``.
"""

__version__ = "0.1.0"
