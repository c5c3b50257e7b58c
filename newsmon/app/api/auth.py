"""The optional API token (``NEWSMON_API_TOKEN``): as a bearer header, or as the cookie ``/login``
sets for browsers. Only ``/login`` and ``/healthz`` are open without it."""

from __future__ import annotations

import hmac
import html
import os

from fastapi import Request

TOKEN_ENV = "NEWSMON_API_TOKEN"
COOKIE = "newsmon_token"
OPEN_PATHS = ("/login", "/healthz")  # how a browser presents the token; liveness for orchestrators (no data)


def authorised(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        given = request.cookies.get(COOKIE, "")
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def local_path(target: str) -> str:
    """A path on this server to go back to after signing in; anything else (another site) is "/"."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


def login_page(next_: str, error: str = "") -> str:
    alert = f'<p role="alert">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>newsmon: sign in</title></head>
<body><main><h1>newsmon</h1>{alert}
<form method="post" action="/login"><input type="hidden" name="next" value="{html.escape(local_path(next_))}">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button></form></main></body></html>
"""


def token_from_env(env=os.environ) -> str | None:
    return env.get(TOKEN_ENV) or None
