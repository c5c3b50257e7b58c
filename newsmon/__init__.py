"""newsmon: streaming news monitoring.

This package is the kernel every stage imports (record, bus, runner, settings, search contract,
errors, metrics, logs, shared helpers); the stages live in ``ingest``, ``enrich`` and ``sinks``, and
the application that composes them (CLI, API, web page, demo) in ``newsmon.app``.
"""

__version__ = "0.1.0"
