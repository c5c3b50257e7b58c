"""Every error newsmon raises on purpose, in one hierarchy.

Each message is one line a user can act on: it names the item (a file and key, a URL,
a record, a subscriber) and the reason. The CLI maps these to messages and exit codes
in one place (``newsmon.app.cli``), the API to HTTP answers in one place
(``newsmon.app.api``); anything else that escapes is a bug.

    NewsmonError
    ├── ConfigError           the operator's configuration is invalid: fix a file or a variable
    │   └── ChannelError      a subscriber's channel URL is not one newsmon can send to
    ├── Unavailable           a server newsmon depends on cannot be reached now; try again later
    │   └── SinkUnavailable   a sink cannot take a batch now: the runner delivers it again
    ├── ServiceError          a server refused a request that retrying will not fix
    ├── RecordError           a bus message that is not a valid article record
    ├── QueryError            a search query or filter that cannot be searched
    ├── FetchError            a URL could not be fetched (``transient``: it may work later)
    │   └── AddressRefused    the address is not one requests may go to
    ├── FeedParseError        a fetched document is not a usable feed
    ├── ExtractionError       a page has no article text to extract
    └── DeliveryError         a channel did not accept an alert (``transient``: retried)
"""

from __future__ import annotations


class NewsmonError(Exception):
    """Base of the errors newsmon raises on purpose; ``str()`` is the one-line message."""


class ConfigError(NewsmonError):
    """The configuration is invalid; the message names the file, the key and the problem."""


class ChannelError(ConfigError, ValueError):
    """A subscriber's channel URL that newsmon cannot send to (a ValueError too: pydantic validators
    raise it). ``url`` must come with its secrets masked already (``sinks.channels.mask``)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"channel {url}: {reason}")
        self.url, self.reason = url, reason


class Unavailable(NewsmonError):
    """A server newsmon depends on (the bus, the search cluster) cannot be reached or answer now.

    ``retry_after``: seconds after which trying again makes sense, when known.
    """

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class SinkUnavailable(Unavailable):
    """A sink cannot take the batch now (its server is down or overloaded). Nothing of the batch
    is committed; the runner delivers it again, no sooner than ``retry_after`` seconds."""


class ServiceError(NewsmonError):
    """A server newsmon uses (the search cluster) answered with an error that retrying will not fix:
    an unsupported version, wrong credentials, a request it refuses."""


class RecordError(NewsmonError, ValueError):
    """A message that is not a valid article record (undecodable or schema-invalid)."""


class QueryError(NewsmonError, ValueError):
    """A query or filter value that cannot be searched; the message says why and what would do."""


class FetchError(NewsmonError):
    """A URL could not be fetched. ``transient`` errors may succeed if tried again later."""

    def __init__(self, url: str, reason: str, *, transient: bool = False, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.transient = transient
        self.status = status
        self.retry_after = retry_after  # seconds the server asked us to wait (429/503 Retry-After)


class AddressRefused(FetchError):
    """The host resolves only to addresses the address policy refuses (not public, not allow-listed)."""


class FeedParseError(NewsmonError):
    """A fetched document is not a feed newsmon can read; the message says why."""


class ExtractionError(NewsmonError):
    """A page from which no article text could be extracted; the message says why."""


class DeliveryError(NewsmonError):
    """One delivery attempt failed. ``transient``: trying again later can succeed (network, 5xx, 429);
    ``retry_after``: seconds the receiver asked to wait (Retry-After), if it did."""

    def __init__(self, reason: str, *, transient: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.transient, self.retry_after = reason, transient, retry_after
