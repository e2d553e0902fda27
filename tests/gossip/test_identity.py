"""identity.json: a stable name and an incarnation floor; its own error for a malformed file."""

from __future__ import annotations

import json

import pytest

from gossip.config import HEADROOM_FLOOR, LOCAL, MAX_INCARNATION
from gossip.identity import FILE_NAME, Identity, IdentityError, IdentityStore
from gossip.types import MemberState

from .corenet import CoreNet


def write(tmp_path, text: str) -> IdentityStore:
    (tmp_path / FILE_NAME).write_text(text)
    return IdentityStore(tmp_path)


def test_each_start_bumps_the_incarnation_and_keeps_the_name(tmp_path):
    store = IdentityStore(tmp_path)
    first = store.start(prefix="mm")
    assert first.name.startswith("mm-") and first.incarnation == 1
    store.record(Identity(first.name, 7))
    assert store.start() == Identity(first.name, 8)


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '"mm-1"',
        "null",
        '{"name": 5, "incarnation": 1}',
        '{"name": ["mm-1"], "incarnation": 1}',
        '{"name": {"a": 1}, "incarnation": 1}',
        '{"name": "", "incarnation": 1}',
        '{"name": "bad name!", "incarnation": 1}',
        '{"name": "mm-1", "incarnation": "3"}',
        '{"name": "mm-1", "incarnation": -1}',
        '{"name": "mm-1", "incarnation": 1.5}',
        '{"name": "mm-1", "incarnation": 1e400}',
        '{"name": "mm-1", "incarnation": true}',
        '{"name": "mm-1", "incarnation": [1]}',
        '{"name": "mm-1", "incarnation": {"n": 1}}',
        '{"name": "mm-1", "incarnation": ' + "9" * 5000 + "}",  # too many digits for json
        "{not json",
    ],
)
def test_a_malformed_identity_file_is_an_identity_error_naming_it(tmp_path, text):
    store = write(tmp_path, text)
    with pytest.raises(IdentityError, match=FILE_NAME):
        store.start()
    with pytest.raises(IdentityError):
        store.start("mm-1")
    # A running peer that raises its incarnation rewrites a file damaged under it.
    store.record(Identity("mm-1", 4))
    assert json.loads((tmp_path / FILE_NAME).read_text()) == {"name": "mm-1", "incarnation": 4}


def test_an_incarnation_above_the_bound_restarts_at_the_headroom_floor_and_is_never_written(tmp_path):
    # 2**63 + 1: what a peer refuting a forged Dead at 2**63 - 1 stored before the bound existed.
    store = write(tmp_path, json.dumps({"name": "mm-3", "incarnation": 2**63 + 1}))
    identity = store.start()
    assert identity == Identity("mm-3", HEADROOM_FLOOR, clamped_from=2**63 + 1)
    assert json.loads((tmp_path / FILE_NAME).read_text())["incarnation"] == HEADROOM_FLOOR
    assert store.start() == Identity("mm-3", HEADROOM_FLOOR + 1)


def test_at_the_bound_a_peer_stays_at_the_bound(tmp_path):
    store = write(tmp_path, json.dumps({"name": "mm-3", "incarnation": MAX_INCARNATION}))
    assert store.start() == Identity("mm-3", MAX_INCARNATION)
    store.record(Identity("mm-3", MAX_INCARNATION + 5))
    assert json.loads((tmp_path / FILE_NAME).read_text())["incarnation"] == MAX_INCARNATION


def test_a_peer_whose_file_held_a_huge_incarnation_starts_and_rejoins(tmp_path):
    net = CoreNet(LOCAL)
    names = net.cluster(4)
    net.run_until(3.0)
    net.crash("n3")
    net.run_until(15.0)
    assert all(net.state(v, "n3") is MemberState.DEAD for v in names[:3])
    identity = write(tmp_path, json.dumps({"name": "n3", "incarnation": 2**63 + 1})).start()
    net.add("n3", incarnation=identity.incarnation, join=["n0"])
    net.run_until(20.0)
    for viewer in names:
        assert net.state(viewer, "n3") is MemberState.ALIVE
        assert net.nodes[viewer].member("n3").incarnation == HEADROOM_FLOOR
