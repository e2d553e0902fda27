"""From a partition spec to each peer's link rules (peer/faults/plan.py)."""

from __future__ import annotations

import pytest

from peer.faults.plan import (
    LinkEffect,
    Partition,
    PlanError,
    parse_delay,
    parse_groups,
    parse_probability,
    partition_from_record,
    rules_for,
)

NAMES = ["mm-1", "mm-2", "mm-3", "exchange", "ledger"]
PEERS = [{"name": n, "gossip": f"127.0.0.1:{7000 + i}", "http": f"http://127.0.0.1:{8000 + i}", "pid": 1}
         for i, n in enumerate(NAMES)]


def test_groups_are_split_by_bars_and_commas():
    assert parse_groups(" mm-1, mm-2 |mm-3,exchange ", NAMES) == [["mm-1", "mm-2"], ["mm-3", "exchange"]]


@pytest.mark.parametrize("spec, words", [
    ("mm-1,mm-2", "at least two groups"),
    ("mm-1 | ", "empty group"),
    ("mm-1 | mm-9", "no peer named 'mm-9'"),
    ("mm-1 | mm-1", "more than one group"),
    ("", "empty group"),
])
def test_a_spec_that_cannot_be_applied_is_refused_with_the_reason(spec, words):
    with pytest.raises(PlanError, match=words):
        parse_groups(spec, NAMES)


def test_a_cut_gives_every_peer_of_a_group_a_rule_naming_the_other_groups_both_ways():
    rules = rules_for(Partition([["mm-1", "mm-2"], ["mm-3", "exchange"]]), PEERS, rule_id="p-1", until=None)
    assert set(rules) == {"mm-1", "mm-2", "mm-3", "exchange"}  # the ledger is not named: untouched
    assert [p["name"] for p in rules["mm-1"]["peers"]] == ["mm-3", "exchange"]
    assert [p["name"] for p in rules["exchange"]["peers"]] == ["mm-1", "mm-2"]
    assert rules["mm-1"]["peers"][0] == {"name": "mm-3", "gossip": "127.0.0.1:7002", "http": "http://127.0.0.1:8002"}
    assert all(r["direction"] == "both" and r["cut"] and r["id"] == "p-1" and r["until"] is None
               for r in rules.values())


def test_three_groups_cut_every_pair():
    rules = rules_for(Partition([["mm-1"], ["mm-2"], ["mm-3"]]), PEERS, rule_id="p", until=5.0)
    assert {p["name"] for p in rules["mm-2"]["peers"]} == {"mm-1", "mm-3"}
    assert rules["mm-3"]["until"] == 5.0


def test_one_way_cuts_out_of_the_left_and_into_the_right():
    rules = rules_for(Partition([["mm-1"], ["mm-2", "mm-3"]], one_way=True), PEERS, rule_id="p", until=None)
    assert rules["mm-1"]["direction"] == "out"
    assert rules["mm-2"]["direction"] == rules["mm-3"]["direction"] == "in"
    with pytest.raises(PlanError, match="exactly two groups"):
        rules_for(Partition([["mm-1"], ["mm-2"], ["mm-3"]], one_way=True), PEERS, rule_id="p", until=None)


def test_a_degradation_is_carried_in_every_rule():
    effect = LinkEffect(cut=False, loss=0.2, delay_ms=50.0, jitter_ms=10.0, duplicate=0.1)
    rules = rules_for(Partition([["mm-1"], ["mm-2"]], effect=effect), PEERS, rule_id="p", until=None)
    assert {k: rules["mm-2"][k] for k in ("cut", "loss", "delay_ms", "jitter_ms", "duplicate")} == effect.to_json()


@pytest.mark.parametrize("text, expected", [
    ("50", (50.0, 0.0)), ("50ms", (50.0, 0.0)), ("50±10", (50.0, 10.0)), ("50+-10", (50.0, 10.0)),
    (" 7.5 ~ 2 ", (7.5, 2.0)),
])
def test_delays_are_read_with_their_jitter(text, expected):
    assert parse_delay(text) == expected


@pytest.mark.parametrize("text", ["", "-5", "fast", "10±20", "nan", "1e9", "70000"])
def test_a_bad_delay_is_refused(text):
    with pytest.raises(PlanError, match="--delay"):
        parse_delay(text)


@pytest.mark.parametrize("text", ["-0.1", "1.5", "nan", "x", "inf"])
def test_a_probability_outside_0_to_1_is_refused(text):
    with pytest.raises(PlanError, match="--loss"):
        parse_probability(text, "loss")


def test_a_journal_record_gives_back_the_partition_it_describes():
    partition = Partition([["mm-1"], ["exchange"]], one_way=True,
                          effect=LinkEffect(cut=False, loss=0.5))
    record = {"groups": partition.groups, "one_way": True, **partition.effect.to_json()}
    again = partition_from_record(record)
    assert again == partition
    assert again.summary == "mm-1 -> exchange"
