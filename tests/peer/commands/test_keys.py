"""`murmur keygen` and the key reading of `murmur keys`: keys from a file or stdin, never argv."""

from __future__ import annotations

import io

import pytest

from gossip.keyring import Keyring, decode_key, encode_key, key_id
from peer.cli import main
from peer.commands._common import UsageError
from peer.commands.keys import read_key_text


def test_keygen_prints_a_key_and_its_id(capsys):
    assert main(["keygen"]) == 0
    out, err = capsys.readouterr()
    key = decode_key(out.strip())
    assert err.strip() == f"key id: {key_id(key)}"


def test_keygen_writes_a_key_file_0600_and_never_overwrites_one(tmp_path, capsys):
    path = tmp_path / "cluster.key"
    assert main(["keygen", "--key-file", str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o600 and len(Keyring.load(path).ids()) == 1
    before = path.read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["keygen", "--key-file", str(path)])
    assert exc.value.code == 2 and path.read_bytes() == before


def test_a_key_is_read_from_a_file_or_stdin(tmp_path, monkeypatch):
    key = encode_key(b"k" * 32)
    (tmp_path / "new.key").write_text(key + "\n")
    assert read_key_text(str(tmp_path / "new.key")) == key
    monkeypatch.setattr("sys.stdin", io.StringIO(key + "\n"))
    assert read_key_text("-") == key


@pytest.mark.parametrize("text", ["", "not base64", encode_key(b"short"), "a\nb\n"])
def test_a_key_file_that_is_not_one_key_is_a_usage_error_without_its_content(tmp_path, text):
    (tmp_path / "bad.key").write_text(text)
    with pytest.raises(UsageError) as exc:
        read_key_text(str(tmp_path / "bad.key"))
    assert "bad.key" in str(exc.value) and ("not base64" not in str(exc.value) or text != "not base64")


def test_keys_needs_a_launched_cluster(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["keys", "list", "--data-dir", str(tmp_path)])
    assert exc.value.code == 2
