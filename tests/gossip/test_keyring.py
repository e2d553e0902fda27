"""The cluster keyring (gossip/keyring.py): keys by id, one primary, key files read as hostile
input (only KeyringError, never the key in a message), written 0600."""

from __future__ import annotations

import json
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip.keyring import (
    MAX_FILE,
    MAX_KEYS,
    Keyring,
    KeyringError,
    decode_key,
    encode_key,
    generate_key,
    key_id,
    new_key_file,
)


def test_a_key_file_round_trips_with_mode_0600_and_its_primary(tmp_path):
    path = tmp_path / "cluster.key"
    ring = new_key_file(path)
    second = generate_key()
    ring.install(second)
    ring.use(key_id(second))
    ring.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = Keyring.load(path)
    assert loaded.describe() == ring.describe() and loaded.primary == second
    assert set(loaded.ids()) == set(ring.ids()) and len(loaded.ids()) == 2


def test_rotation_rules_refuse_a_missing_key_and_removing_the_primary():
    a, b = generate_key(), generate_key()
    ring = Keyring([a])
    with pytest.raises(KeyringError):
        ring.use(key_id(b))
    ring.install(b)
    with pytest.raises(KeyringError):
        ring.remove(key_id(a))  # still the primary
    ring.use(key_id(b))
    ring.remove(key_id(a))
    assert ring.ids() == [key_id(b)] and ring.primary == b
    with pytest.raises(KeyringError):
        ring.remove(key_id(a))
    for _ in range(MAX_KEYS - 1):
        ring.install(generate_key())
    with pytest.raises(KeyringError):
        ring.install(generate_key())


def test_a_key_never_appears_in_repr_describe_or_an_error():
    key = generate_key()
    ring = Keyring([key])
    text = repr(ring) + json.dumps(ring.describe())
    assert encode_key(key) not in text and key.hex() not in text and key_id(key) in text


@pytest.mark.parametrize("content, what", [
    (b"", "not JSON"),
    (b"{", "not JSON"),
    (b"[" * 60_000, "not JSON"),  # deep nesting, under the size cap
    (b"[]", "a key file is JSON"),
    (b'{"keys": "abc"}', "a key file is JSON"),
    (b'{"keys": []}', "at least one key"),
    (b'{"keys": [123]}', "base64 string"),
    (b'{"keys": ["not base64!"]}', "must be base64"),
    (json.dumps({"keys": [encode_key(b"short")]}).encode(), "32 bytes"),
    (json.dumps({"keys": [encode_key(bytes(32))], "primary": 5}).encode(), "primary must be"),
    (json.dumps({"keys": [encode_key(bytes(32))], "primary": "deadbeef"}).encode(), "not in the keyring"),
    (json.dumps({"keys": [encode_key(os.urandom(32)) for _ in range(MAX_KEYS + 1)]}).encode(), "at most"),
    (b" " * (MAX_FILE + 1), "larger than"),
])
def test_a_malformed_key_file_raises_keyring_error_naming_the_file(tmp_path, content, what):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(KeyringError) as err:
        Keyring.load(path)
    assert what in str(err.value) and str(path) in str(err.value)


def test_an_unreadable_key_file_raises_keyring_error(tmp_path):
    with pytest.raises(KeyringError, match="cannot read"):
        Keyring.load(tmp_path / "missing.key")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4),
                           max_leaves=20)


@given(data=st.one_of(json_values, st.fixed_dictionaries({"keys": st.lists(json_values, max_size=3)},
                                                          optional={"primary": json_values})))
def test_any_json_is_a_keyring_or_keyring_error(data):
    try:
        ring = Keyring.from_json(data)
    except KeyringError:
        return
    assert ring.primary_id in ring.ids()


@given(text=st.text(max_size=80))
def test_any_text_is_a_key_or_keyring_error(text):
    try:
        key = decode_key(text)
    except KeyringError:
        return
    assert len(key) == 32
