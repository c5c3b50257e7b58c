"""The application: it composes the stages (``ingest``, ``enrich``, ``sinks``) over the kernel
(``newsmon``) into the pipeline, and gives it to people: the CLI, the HTTP API and web page, the
demo. Nothing below imports it."""
