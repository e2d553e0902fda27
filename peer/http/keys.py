"""`/admin/keys`: the operator rotates a running peer's cluster keyring (`murmur keys`).

What it is for: rotation with no downtime (docs/runbook.md): install the new key on every peer
(each still sends with the old one and accepts both), make it the primary on every peer, then
remove the old one. Each step changes the keyring the peer seals gossip and signs calls with at
once (`handle.keyring`, shared in place) and is written to the peer's key file first, so a
restarted peer keeps it. Routes, served by every peer:

- `GET /admin/keys` -> 200 `{"sealed": true, "primary": "<id>", "ids": [...], "key_file": "..."}`
- `POST /admin/keys` body `{"key": "<base64 of 32 bytes>"}` -> 200 `{"installed": "<id>", ...}`
- `PUT /admin/keys` body `{"primary": "<id>"}` -> 200: sends with that installed key from now on
- `DELETE /admin/keys` body `{"id": "<id>"}` -> 200: no longer accepts that key (not the primary)

Every request must carry the admin token (as /admin/links, peer/faults/admin.py: 401 without
it). A bad body or a refused change (unknown id, removing the primary, a malformed key) gets 400
`{"error", "field"}` and changes nothing; a peer started --insecure answers 409; a key file that
cannot be written answers 500 and the keyring is unchanged. Changes are logged as
`keys_changed` with key ids only.

What it must never do: answer or log a key (ids only), change the keyring without the admin
token, or change the running keyring when its file could not be written.
"""

from __future__ import annotations

import re
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from book.bounds import FieldError, short
from gossip.keyring import Keyring, KeyringError, decode_key
from peer.http import inputs

PATH = "/admin/keys"
MAX_BODY = 4096
_KID = re.compile(r"[0-9a-f]{8}")


class KeyFieldError(FieldError):
    """A /admin/keys body refused because of one field."""


def _refused_token(request: Request) -> Response | None:
    admin = getattr(request.app.state, "admin", None)
    why = "this peer has no admin endpoint" if admin is None else admin.refusal(
        request.headers.get("authorization"))
    if why is None:
        return None
    return JSONResponse({"error": f"authorization: {why}", "field": "authorization"}, status_code=401,
                        headers={"www-authenticate": "Bearer"})


def _described(handle: Any) -> dict[str, Any]:
    ring = handle.keyring
    return {"sealed": True, **ring.describe(), "key_file": None if handle.key_file is None else str(handle.key_file)}


def _kid(body: dict[str, Any], name: str) -> str:
    value = body[name]
    if type(value) is not str or not _KID.fullmatch(value):
        raise KeyFieldError(name, f"a key id is 8 lowercase hex digits, got {short(value)}")
    return value


def _log(request: Request, **fields: Any) -> None:
    admin = getattr(request.app.state, "admin", None)
    if admin is not None and admin.log is not None:
        admin.log("keys_changed", **fields)


async def _change(request: Request, field: str, change) -> Response:
    """Apply `change(keyring) -> dict` to a copy, write the copy to the key file, then apply it
    to the running keyring: the file and the peer never disagree, whatever fails."""
    refused = _refused_token(request)
    if refused is not None:
        return refused
    handle = request.app.state.peer
    if handle.keyring is None:
        return JSONResponse({"error": "keyring: this peer runs --insecure, with no keyring", "field": "keyring"},
                            status_code=409)
    try:
        body = inputs.json_object(await request.body(), (field,), required=(field,), max_bytes=MAX_BODY,
                                  error=KeyFieldError)
    except KeyFieldError as exc:
        status, payload = inputs.refusal(exc)
        return JSONResponse(payload, status_code=status)
    lock = getattr(request.app.state, "keys_lock", None)
    if lock is None:
        lock = request.app.state.keys_lock = trio.Lock()
    async with lock:
        try:
            copy = Keyring.from_json(handle.keyring.to_json())
            done = change(copy, body)
        except KeyringError as exc:
            status, payload = inputs.refusal(KeyFieldError(field, str(exc)))
            return JSONResponse(payload, status_code=status)
        except KeyFieldError as exc:
            status, payload = inputs.refusal(exc)
            return JSONResponse(payload, status_code=status)
        if handle.key_file is not None:
            try:
                await trio.to_thread.run_sync(copy.save, handle.key_file)
            except OSError as exc:
                return JSONResponse({"error": f"key_file: cannot write {handle.key_file}: "
                                              f"{exc.strerror or type(exc).__name__}", "field": "key_file"},
                                    status_code=500)
        change(handle.keyring, body)  # cannot fail now: the copy took the same step
    _log(request, **done, **handle.keyring.describe())
    return JSONResponse({**done, **_described(handle)})


async def get_keys(request: Request) -> Response:
    refused = _refused_token(request)
    if refused is not None:
        return refused
    handle = request.app.state.peer
    if handle.keyring is None:
        return JSONResponse({"sealed": False, "primary": None, "ids": [], "key_file": None})
    return JSONResponse(_described(handle))


def _install(ring: Keyring, body: dict[str, Any]) -> dict[str, Any]:
    try:
        key = decode_key(body["key"])
    except KeyringError as exc:
        raise KeyFieldError("key", str(exc)) from None
    return {"action": "install", "installed": ring.install(key)}


def _use(ring: Keyring, body: dict[str, Any]) -> dict[str, Any]:
    kid = _kid(body, "primary")
    ring.use(kid)
    return {"action": "use", "used": kid}


def _remove(ring: Keyring, body: dict[str, Any]) -> dict[str, Any]:
    kid = _kid(body, "id")
    ring.remove(kid)
    return {"action": "remove", "removed": kid}


async def post_keys(request: Request) -> Response:
    return await _change(request, "key", _install)


async def put_keys(request: Request) -> Response:
    return await _change(request, "primary", _use)


async def delete_keys(request: Request) -> Response:
    return await _change(request, "id", _remove)


def key_routes() -> list[Route]:
    return [
        Route(PATH, get_keys, methods=["GET"]),
        Route(PATH, post_keys, methods=["POST"]),
        Route(PATH, put_keys, methods=["PUT"]),
        Route(PATH, delete_keys, methods=["DELETE"]),
    ]
