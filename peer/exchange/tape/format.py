"""The tape's file format: the header, the frame around each record, and one record's bytes.

What it is for: the one place that says what a tape's bytes are, for the reader and the writers
alike, and the errors every part of the tape raises. Format, version 1 (all integers big-endian)::

    file    := header record*
    header  := b"MURMTAPE" version:u16                            10 bytes
    record  := length:u32 crc32(payload):u32 payload               1 <= length <= MAX_RECORD
    payload := one CBOR map with `seq` (int: 1, 2, 3, ... no gaps) and `type` (str);
               every other field is the caller's

It must never touch a file, a clock or the trio loop: bytes and dicts in, bytes and dicts out.
A change to what is written here is a new VERSION, never an edit of version 1.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import cbor2

MAGIC = b"MURMTAPE"
VERSION = 1
HEADER = MAGIC + struct.pack(">H", VERSION)
HEADER_SIZE = len(HEADER)
FRAME = struct.Struct(">II")  # payload length, crc32 of the payload
FRAME_SIZE = FRAME.size
# Guards against a garbage length field making a reader allocate or skip gigabytes; an event
# anywhere near this size is a bug in the caller.
MAX_RECORD = 1 << 20
RUNBOOK = "see docs/runbook.md: corrupt tape"


class TapeError(Exception):
    """Base of every tape error."""


class NotATape(TapeError):
    """The file does not start with a murmur tape header of a version this code reads."""


class CorruptTape(TapeError):
    """A damaged record that is not a torn tail: refused, never cut."""

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str, *, last_seq: int):
        self.path = str(path)
        self.offset = offset
        self.reason = reason
        self.last_seq = last_seq
        super().__init__(
            f"{self.path}: corrupt tape at byte {offset} (after seq {last_seq}): {reason}; "
            f"the tape is refused, not cut — {RUNBOOK}"
        )


class InvalidRecord(TapeError, ValueError):
    """A record that cannot go on the tape (not a dict, no `type`, not CBOR, too large)."""


# ---------------------------------------------------------------------------------------------
# Encoding and decoding one record


def encode_record(record: Mapping[str, Any], seq: int) -> bytes:
    """The framed bytes of `record` as seq `seq`: length, CRC, CBOR payload.

    The payload is a new map (`seq`, `type`, then the caller's fields); `record` is not changed.
    A `seq` already in `record` must be exactly `seq`.
    """
    if not isinstance(record, Mapping):
        raise InvalidRecord(f"a tape record is a dict, got {type(record).__name__}")
    kind = record.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidRecord(f"a tape record needs a non-empty str 'type', got {kind!r}")
    if "seq" in record:
        given = record["seq"]
        if type(given) is not int or given != seq:
            raise InvalidRecord(
                f"record carries seq {given!r} but the next seq is {seq}; "
                "leave seq out and the writer assigns it"
            )
    payload: dict[Any, Any] = {"seq": seq, "type": kind}
    for key, value in record.items():
        if key != "seq" and key != "type":
            payload[key] = value
    try:
        data = cbor2.dumps(payload)
    except Exception as exc:  # the caller's values: any encoder error, cycles, odd types
        raise InvalidRecord(f"record of type {kind!r} is not CBOR-encodable: {exc}") from exc
    if len(data) > MAX_RECORD:
        raise InvalidRecord(
            f"record of type {kind!r} is {len(data)} bytes encoded; the limit is {MAX_RECORD}"
        )
    return FRAME.pack(len(data), zlib.crc32(data)) + data


def decode_payload(payload: bytes) -> dict[Any, Any]:
    """The record in a CRC-checked payload; InvalidRecord unless it is a CBOR map with seq/type."""
    fp = io.BytesIO(payload)
    try:
        record = cbor2.CBORDecoder(fp).decode()
    except Exception as exc:  # any decoder error: the bytes are not what a writer makes
        raise InvalidRecord(f"payload is not CBOR: {exc}") from None
    if fp.tell() != len(payload):
        raise InvalidRecord(f"{len(payload) - fp.tell()} stray bytes after the CBOR payload")
    if not isinstance(record, dict):
        raise InvalidRecord(f"payload is a CBOR {type(record).__name__}, not a map")
    seq = record.get("seq")
    if type(seq) is not int or seq < 1:
        raise InvalidRecord(f"payload has no valid seq (got {seq!r})")
    if not isinstance(record.get("type"), str):
        raise InvalidRecord(f"payload has no str type (got {record.get('type')!r})")
    return record
