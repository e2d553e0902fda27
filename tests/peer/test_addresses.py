"""HOST:PORT parsing (`peer/addresses.py`): what a person may type, and what is refused."""

from __future__ import annotations

import pytest

from peer.addresses import (
    AddressError,
    format_address,
    is_unspecified,
    parse_address,
    parse_address_list,
)


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        ("127.0.0.1:7946", ("127.0.0.1", 7946)),
        (" 10.0.0.5:0 ", ("10.0.0.5", 0)),
        ("[::1]:7946", ("::1", 7946)),
        ("node-a.lan:80", ("node-a.lan", 80)),
    ],
)
def test_valid_addresses_parse_and_print_back(text, addr):
    assert parse_address(text) == addr
    assert parse_address(format_address(addr)) == addr


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("7946", "expected HOST:PORT"),
        (":7946", "missing host"),
        ("host:", "port must be"),
        ("host:http", "port must be"),
        ("host:65536", "port must be"),
        ("::1:7946", "brackets"),
        ("[::1]7946", "[IPV6]:PORT"),
    ],
)
def test_invalid_addresses_say_what_is_wrong(text, says):
    with pytest.raises(AddressError, match=says.replace("[", r"\[").replace("]", r"\]")):
        parse_address(text)


def test_address_lists_are_comma_separated_and_skip_empty_items():
    assert parse_address_list("a:1,,b:2,") == [("a", 1), ("b", 2)]


def test_wildcard_hosts_are_unspecified():
    assert is_unspecified("0.0.0.0") and is_unspecified("::")
    assert not is_unspecified("127.0.0.1") and not is_unspecified("host.lan")
