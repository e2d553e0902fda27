"""Which member this peer treats as the exchange, and which as the ledger: a sticky choice.

What it is for: the exchange and the ledger are one member each, found by the `role` a member
advertises in its gossip metadata. Any member can advertise any role, so two members may claim
one. The rule, the same in every peer:

- a peer binds to the first member it sees claiming the role while no other up member claims it,
  and keeps that member (by name) for as long as it is in the view and has not left: while it is
  suspect, dead or restarting, requests for that role fail and wait; they never go elsewhere;
- it forgets it only when the member leaves gracefully or is forgotten by the view (reaped after
  the profile's dead retention): then the next sole claimant is bound;
- while no member is bound and two or more up members claim the role, none is used;
- every up claimant other than the bound one is a conflict: logged once per change
  (`role_conflict`), shown in `/status` and `/metrics`, and never sent a request.

So a member that appears later claiming the ledger's role receives nothing, and a cluster that
starts with two ledgers waits, visibly, for the operator rather than choose one by its name.

It must never do I/O or read a clock: it takes the membership view as an argument. The caller
logs through the `log` it hands in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gossip.types import Member, MemberState

SINGLETON_ROLES = ("exchange", "ledger")


@dataclass(frozen=True, slots=True)
class RoleChoice:
    role: str
    holder: str | None  # the member bound to the role, alive or not
    url: str | None  # where to send requests now: the holder's HTTP URL while it is alive
    conflict: tuple[str, ...]  # up members that claim the role but are not (or cannot be) used

    def to_json(self) -> dict[str, Any]:
        return {"holder": self.holder, "url": self.url, "conflict": list(self.conflict)}


class RoleDirectory:
    """Sticky role bindings for one peer; see the module docstring for the rule."""

    def __init__(self, log: Callable[..., None] | None = None, *, me: tuple[str, str] | None = None) -> None:
        """`me`: this peer's own (role, name); a peer of a singleton role is bound to itself."""
        self._log = log
        self._holders: dict[str, str] = {}
        self._me = me
        self._choices: dict[str, RoleChoice] = {}

    def choose(self, role: str, members: Iterable[Member]) -> RoleChoice:
        view = {m.name: m for m in members}
        claimants = sorted(m.name for m in view.values() if m.role == role and m.state.is_up and m.http)
        if self._me is not None and self._me[0] == role:
            self._holders[role] = self._me[1]
        holder = self._holders.get(role)
        if holder is not None and holder != (self._me or ("", ""))[1]:
            held = view.get(holder)
            if held is None or held.state is MemberState.LEFT or held.role != role:
                self._note(role, "role_unbound", holder=holder,
                           reason="forgotten" if held is None else ("left" if held.role == role else "role-changed"))
                holder = None
                del self._holders[role]
        if holder is None and len(claimants) == 1:
            holder = self._holders[role] = claimants[0]
            self._note(role, "role_bound", holder=holder, reason="sole-claimant")
        held = view.get(holder) if holder is not None else None
        url = held.http if held is not None and held.state is MemberState.ALIVE else None
        choice = RoleChoice(role, holder, url, tuple(n for n in claimants if n != holder))
        before = self._choices.get(role)
        if before is None or before.conflict != choice.conflict:
            if choice.conflict or (before is not None and before.conflict):
                reason = ("resolved" if not choice.conflict else
                          "another-member-claims-the-role" if holder else "several-claimants-none-bound")
                self._note(role, "role_conflict", holder=holder, claimants=list(choice.conflict), reason=reason)
        self._choices[role] = choice
        return choice

    def url(self, role: str, members: Iterable[Member]) -> str | None:
        return self.choose(role, members).url

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The last choice made for each role (what `/status` shows)."""
        return {role: c.to_json() for role, c in sorted(self._choices.items())}

    def conflicts(self) -> dict[str, int]:
        return {role: len(c.conflict) for role, c in self._choices.items()}

    def _note(self, role: str, event: str, **fields: Any) -> None:
        if self._log is not None:
            self._log(event, role=role, **fields)
