"""The admin endpoint every peer serves: `/admin/links`, where `murmur partition` sets the link filter.

What it is for: the operator's commands (peer/faults/nemesis.py) give each peer its link rules
(peer/faults/links.py) while it runs; the rules apply at once to the peer's running transports
(gossip UDP and TCP, its HTTP client and server). Routes, added for every role by peer/runner.py:

- `GET /admin/links` -> 200 `{"rules": [...]}`
- `POST /admin/links` body `{"rule": {...}, "reason": "..."}` (`reason` optional, logged) -> 200
  `{"rules": [...]}`: adds the rule, or replaces the one with the same id
- `DELETE /admin/links` (optional body `{"reason": "..."}`) -> 200 `{"removed": n, "rules": []}`

Every request must carry the cluster's admin token, `Authorization: Bearer <token>`: the file
that `murmur launch` writes in its data dir (mode 0600) and hands each peer with
`--admin-token-file`, read once at start (`read_token`) and compared in constant time. A request
without it, or with a wrong one, gets 401 `{"error", "field": "authorization"}` and changes
nothing; a peer started without a token file answers 401 to every /admin request. A bad body gets
the 400 every API gives (peer/http/inputs.py). Each change, and each rule that runs out at its
`until` (`Admin.run` removes it), is logged as `links_changed` with its action and reason.

What it must never do: change a rule for a request that is not authorized, compare the token
in a way whose time depends on it, or echo the token back.
"""

from __future__ import annotations

import hmac
import math
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from book.bounds import short
from peer.faults.links import BadRule, LinkFilter, Rule, parse_rule
from peer.http import inputs

__all__ = ["MAX_BODY", "Admin", "AdminTokenError", "admin_routes", "read_token"]

# A rule of 1,000 peers, each with its name and two addresses, is about 100 KB of JSON.
MAX_BODY = 256 * 1024
MAX_REASON = 200
MAX_TOKEN = 4096
PATH = "/admin/links"


class AdminTokenError(RuntimeError):
    """The token file given with --admin-token-file cannot be used; the message says why."""


async def read_token(path: Path | None) -> tuple[str | None, str | None]:
    """The token in `path` (None without a file), and a warning when others may read the file."""
    if path is None:
        return None, None
    try:
        info = await trio.to_thread.run_sync(os.stat, path)
        text = await trio.Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise AdminTokenError(f"cannot read the admin token file {path}: {why}") from None
    token = text.strip()
    if not token or len(token) > MAX_TOKEN or not token.isprintable() or " " in token:
        raise AdminTokenError(f"the admin token file {path} holds no token (one line, at most "
                              f"{MAX_TOKEN} printable characters)")
    warning = None
    if stat.S_IMODE(info.st_mode) & 0o077:
        warning = f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}); murmur launch writes it 0600"
    return token, warning


class Admin:
    """What the routes act on: the peer's link filter, its token and its log (in `app.state.admin`)."""

    def __init__(self, links: LinkFilter, token: str | None, *, log: Callable[..., Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.links = links
        self._token = None if token is None else token.encode()
        self.log = log
        self.clock = clock
        self._changed = trio.Event()

    def refusal(self, authorization: str | None) -> str | None:
        """Why a request with this Authorization header is refused, or None if it may go on."""
        if self._token is None:
            return "this peer was started without --admin-token-file: /admin is closed"
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return "required: Authorization: Bearer <the cluster's admin token>"
        # Header values reach us decoded as latin-1: encoding back gives the bytes that were sent.
        if not hmac.compare_digest(given.strip().encode("latin-1"), self._token):
            return "wrong admin token"
        return None

    def set(self, rule: Rule | dict[str, Any], reason: str) -> bool:
        """Add or replace a rule (BadRule for a bad one, and nothing changes); True if replaced."""
        if not isinstance(rule, Rule):
            rule = parse_rule(rule, where="rule.")
        replaced = self.links.set(rule, where="rule.")
        self._record("replace" if replaced else "add", reason, rule_id=rule.id)
        return replaced

    def clear(self, reason: str) -> int:
        removed = self.links.clear()
        self._record("clear", reason, removed=removed)
        return removed

    def expire(self) -> None:
        for rule in self.links.expire(self.clock()):
            self._record("expire", "until passed", rule_id=rule.id, until=rule.until)

    def _record(self, action: str, reason: str, **fields: Any) -> None:
        if self.log is not None:
            self.log("links_changed", action=action, rules=len(self.links), reason=reason, **fields)
        # Wake `run`: the next expiry may have moved.
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Remove (and log) each rule when its `until` passes. Queries ignore such a rule at
        once anyway; this keeps `GET /admin/links` and the log true."""
        task_status.started()
        while True:
            changed = self._changed
            self.expire()
            due = self.links.next_expiry()
            wait = math.inf if due is None else max(0.0, due - self.clock())
            with trio.move_on_after(wait):
                await changed.wait()


def _reason(body: dict[str, Any], default: str) -> str:
    reason = body.get("reason", default)
    if type(reason) is not str or not 1 <= len(reason) <= MAX_REASON or not reason.isprintable():
        raise BadRule("reason", f"must be 1 to {MAX_REASON} printable characters, got {short(reason)}")
    return reason


def _admin(request: Request) -> tuple[Admin | None, Response | None]:
    admin: Admin | None = getattr(request.app.state, "admin", None)
    why = "this peer has no admin endpoint" if admin is None else admin.refusal(
        request.headers.get("authorization"))
    if why is None:
        return admin, None
    return None, JSONResponse({"error": f"authorization: {why}", "field": "authorization"}, status_code=401,
                              headers={"www-authenticate": "Bearer"})


def _refused(exc: BadRule) -> Response:
    status, payload = inputs.refusal(exc)
    return JSONResponse(payload, status_code=status)


async def get_links(request: Request) -> Response:
    admin, refused = _admin(request)
    if admin is None:
        return refused
    admin.expire()
    return JSONResponse({"rules": admin.links.to_json()})


async def post_links(request: Request) -> Response:
    admin, refused = _admin(request)
    if admin is None:
        return refused
    try:
        body = inputs.json_object(await request.body(), ("rule", "reason"), required=("rule",),
                                  max_bytes=MAX_BODY, error=BadRule)
        reason = _reason(body, "admin request")
        admin.set(body["rule"], reason)
    except BadRule as exc:
        return _refused(exc)
    return JSONResponse({"rules": admin.links.to_json()})


async def delete_links(request: Request) -> Response:
    admin, refused = _admin(request)
    if admin is None:
        return refused
    try:
        body = inputs.json_object(await request.body(), ("reason",), max_bytes=MAX_BODY, empty_ok=True,
                                  error=BadRule)
        reason = _reason(body, "heal")
    except BadRule as exc:
        return _refused(exc)
    removed = admin.clear(reason)
    return JSONResponse({"removed": removed, "rules": admin.links.to_json()})


def admin_routes() -> list[Route]:
    return [
        Route(PATH, get_links, methods=["GET"]),
        Route(PATH, post_links, methods=["POST"]),
        Route(PATH, delete_links, methods=["DELETE"]),
    ]
