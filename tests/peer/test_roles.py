"""The sticky choice of the exchange and the ledger (peer/roles.py): a member that claims a role
already held is a visible conflict and never receives a request."""

from __future__ import annotations

from gossip.types import Member, MemberState
from peer.roles import RoleDirectory

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT


def member(name: str, role: str, state=ALIVE) -> Member:
    return Member(name, ("127.0.0.1", 1), 1, state, {"role": role, "http": f"http://{name}"})


class Log:
    def __init__(self) -> None:
        self.lines: list[dict] = []

    def __call__(self, event: str, **fields) -> None:
        self.lines.append({"event": event, **fields})


def test_the_sole_claimant_is_bound_and_a_later_claimant_gets_nothing():
    log = Log()
    roles = RoleDirectory(log)
    ledger = member("ledger", "ledger")
    assert roles.url("ledger", [ledger]) == "http://ledger"
    # An impostor named to sort first: it used to be chosen by its name.
    choice = roles.choose("ledger", [member("aaa-ledger", "ledger"), ledger])
    assert choice.url == "http://ledger" and choice.holder == "ledger" and choice.conflict == ("aaa-ledger",)
    conflicts = [x for x in log.lines if x["event"] == "role_conflict"]
    assert conflicts == [{"event": "role_conflict", "role": "ledger", "holder": "ledger",
                          "claimants": ["aaa-ledger"], "reason": "another-member-claims-the-role"}]
    roles.choose("ledger", [member("aaa-ledger", "ledger"), ledger])
    assert len([x for x in log.lines if x["event"] == "role_conflict"]) == 1, "logged once per change"


def test_a_bound_member_that_is_down_is_waited_for_not_replaced():
    roles = RoleDirectory()
    roles.choose("ledger", [member("ledger", "ledger")])
    for state in (SUSPECT, DEAD):
        choice = roles.choose("ledger", [member("ledger", "ledger", state), member("other", "ledger")])
        assert choice.url is None and choice.holder == "ledger" and choice.conflict == ("other",)
    # It restarts under its name: used again.
    assert roles.url("ledger", [member("ledger", "ledger"), member("other", "ledger")]) == "http://ledger"


def test_a_holder_that_left_or_was_forgotten_makes_way_for_the_next_sole_claimant():
    roles = RoleDirectory()
    roles.choose("ledger", [member("ledger", "ledger")])
    assert roles.url("ledger", [member("ledger", "ledger", LEFT), member("ledger-2", "ledger")]) == "http://ledger-2"
    roles = RoleDirectory()
    roles.choose("exchange", [member("ex", "exchange")])
    assert roles.url("exchange", [member("ex-2", "exchange")]) == "http://ex-2"


def test_two_claimants_and_nobody_bound_means_none_is_used_until_one_remains():
    log = Log()
    roles = RoleDirectory(log)
    both = [member("ledger-a", "ledger"), member("ledger-b", "ledger")]
    choice = roles.choose("ledger", both)
    assert choice.url is None and choice.holder is None and choice.conflict == ("ledger-a", "ledger-b")
    assert log.lines[-1]["reason"] == "several-claimants-none-bound"
    choice = roles.choose("ledger", [both[1], member("ledger-a", "ledger", DEAD)])
    assert choice.url == "http://ledger-b" and choice.conflict == ()
    assert log.lines[-1] == {"event": "role_conflict", "role": "ledger", "holder": "ledger-b", "claimants": [],
                             "reason": "resolved"}


def test_the_exchange_or_ledger_itself_is_bound_to_its_own_role():
    roles = RoleDirectory(me=("ledger", "ledger"))
    choice = roles.choose("ledger", [member("aaa-ledger", "ledger"), member("ledger", "ledger")])
    assert choice.holder == "ledger" and choice.conflict == ("aaa-ledger",)
