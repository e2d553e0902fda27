"""The server side of signed calls: which member is calling a route that changes authority or money.

What it is for: the exchange's and the ledger's peer-to-peer routes (claim, renew, release, quote
put and cancel; fills posted to the ledger, reservations) call `caller(request)` first. With a
keyring the request must carry a valid signature (peer/http/signing.py): the answer is the
signer's name, or a 401 JSON refusal naming the problem (unsigned, unknown key, forged, expired,
replayed), counted by reason. The route then checks that the name in the body (a claim's or a
quote's holder, a reservation's) is the signer's, and answers 403 otherwise (`forbidden`).

With no keyring (`--insecure`) nothing is verified, as before signing existed: `caller` returns
None and every name check passes. The guard lives in the app's state (`app.state.guard`); an app
without one is insecure too (unit tests of a role's API that are not about signing).

It must never let a refused request reach a service, read a key, or log a request's content: a
refusal is counted, and its reason is the only thing said about it.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from gossip.keyring import Keyring
from peer.http.signing import (
    REASONS,
    SIGNATURE,
    Grant,
    GrantError,
    GrantSigner,
    GrantVerifier,
    SignatureError,
    Signer,
    Verifier,
    header_map,
)


class Refused(Exception):
    """A request the guard refuses: `response` is its answer."""

    def __init__(self, response: JSONResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


class Guard:
    """Verifies signed calls for one peer: `clock` is the peer's wall clock (a simulation's own);
    `role_holder(role)` names the member this peer takes for the exchange or the ledger. It also
    signs (the ledger) and verifies (the exchange) reservation grants under the same keyring."""

    def __init__(self, keyring: Keyring, *, clock: Callable[[], float],
                 role_holder: Callable[[str], str | None] = lambda role: None) -> None:
        self.verifier = Verifier(keyring)
        self.grant_signer = GrantSigner(keyring)
        self.grants = GrantVerifier(keyring)
        self.clock = clock
        self.role_holder = role_holder
        self.stats: Counter[str] = Counter({"signed_ok": 0, "forbidden": 0, "grants_signed": 0,
                                            "grants_verified": 0, "refused_grant": 0,
                                            **{f"refused_{r}": 0 for r in REASONS}})

    def counters(self) -> dict[str, int]:
        return dict(self.stats)

    async def verify(self, request: Request) -> str:
        # The path as sent (some ASGI servers put the query into raw_path too).
        target = request.scope.get("raw_path", b"").split(b"?", 1)[0].decode("ascii", "replace")
        query = request.scope.get("query_string", b"")
        if query:
            target += "?" + query.decode("ascii", "replace")
        try:
            headers = header_map(request.scope.get("headers", []))
            name = self.verifier.verify(request.method, target, headers, await request.body(), self.clock())
        except SignatureError as exc:
            self.stats[f"refused_{exc.reason}"] += 1
            raise Refused(JSONResponse({"error": f"not a signed call from a member: {exc.message}",
                                        "reason": f"signature-{exc.reason.replace('_', '-')}",
                                        "field": SIGNATURE}, status_code=401)) from None
        self.stats["signed_ok"] += 1
        return name

    def verify_grant(self, grant: Any) -> Grant:
        """A quote's grant, verified; raises Refused (403, field `grant`)."""
        try:
            terms = self.grants.verify(grant)
        except GrantError as exc:
            self.stats["refused_grant"] += 1
            reason = exc.reason if exc.reason.startswith("grant-") else f"grant-{exc.reason.replace('_', '-')}"
            raise Refused(JSONResponse({"error": exc.message, "reason": reason, "field": "grant"},
                                       status_code=403)) from None
        self.stats["grants_verified"] += 1
        return terms

    def sign_grant(self, reservation: dict[str, Any]) -> dict[str, Any] | None:
        """The grant of a reservation (as the ledger answers it), if it holds capacity now."""
        if reservation.get("state") != "active" or reservation.get("decision") == "rejected":
            return None
        self.stats["grants_signed"] += 1
        return self.grant_signer.sign(Grant(
            reservation["reservation_id"], reservation["quote_id"], reservation["holder"], reservation["symbol"],
            reservation["reserved_bid_quantity"], reservation["reserved_ask_quantity"],
            float(reservation["expires_at"])))

    def forbid(self, message: str, field: str) -> Refused:
        self.stats["forbidden"] += 1
        return Refused(JSONResponse({"error": message, "reason": "forbidden", "field": field}, status_code=403))


def peer_guard(handle: Any, keyring: Any, *, clock: Callable[[], float] = time.time) -> Guard | None:
    """The guard of a peer (a PeerHandle) holding `keyring`; None when it has none (insecure).
    Its counters go into the peer's /metrics as `murmur_http_auth_*`."""
    if keyring is None:
        return None

    def role_holder(role: str) -> str | None:
        node = handle.node
        return None if node is None else handle.roles.choose(role, node.members()).holder

    guard = Guard(keyring, clock=clock, role_holder=role_holder)
    handle.stat_sources.append(("murmur_http_auth", guard.counters))
    return guard


def peer_signer(keyring: Keyring | None, name: str) -> Signer | None:
    """What a peer's clients sign with: its keyring's primary key, the wall clock and fresh random
    nonces; None when it has no keyring (insecure)."""
    if keyring is None:
        return None
    return Signer(keyring, name, clock=time.time, nonces=lambda: secrets.randbits(64))


def guard_of(request: Request) -> Guard | None:
    return getattr(request.app.state, "guard", None)


async def caller(request: Request) -> str | None:
    """The verified name of the member calling, None when this peer verifies nothing; raises
    Refused (401) for a call that is not signed by a member."""
    guard = guard_of(request)
    return None if guard is None else await guard.verify(request)


def require_name(request: Request, signer: str | None, claimed: Any, field: str) -> None:
    """The name a call acts for (`claimed`, from its body or its reservation) must be its
    signer's; raises Refused (403). Nothing to check when nothing was verified."""
    guard = guard_of(request)
    if guard is None or signer is None:
        return
    if claimed != signer:
        raise guard.forbid(f"{field} must be the caller's own name ({signer}); members act only for themselves",
                           field)


def require_role(request: Request, signer: str | None, role: str) -> None:
    """The signer must be the member this peer takes for `role`; raises Refused (403)."""
    guard = guard_of(request)
    if guard is None or signer is None:
        return
    holder = guard.role_holder(role)
    if holder is None or holder != signer:
        raise guard.forbid(f"only the {role} ({holder or 'none known'}) may make this call, not {signer}",
                           "x-murmur-peer")
