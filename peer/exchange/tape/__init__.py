"""The exchange's event tape: an append-only, checksummed write-ahead log of every event.

What it is for: every event the exchange accepts or rejects is appended here before anyone is
told about it; on restart the exchange rebuilds its book, quotes, authority and epochs by
replaying the tape from seq 1, and `murmur tape` and the checker read it to show what happened.
What a record means is the exchange's business. One concern a module:

- `format.py`: the bytes (header, frame, one record's CBOR payload) and the errors;
- `reader.py`: `scan` and `TapeReader`, and the walk that tells a torn tail (cut on open) from
  corruption (refused, never cut);
- `writer.py`: opening for append (recover, lock), `TapeWriterSync`, and `TapeWriter`, whose
  group commit is `peer.groupcommit.GroupCommit`.

This package only re-exports their public names: `from peer.exchange.tape import X` is the way
in. It must never rewrite history, never cut anything but a torn tail, and never acknowledge an
append before the record is written and fsynced (see writer.py for what a failed fsync means).
"""

from .format import (
    FRAME,
    FRAME_SIZE,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_RECORD,
    RUNBOOK,
    VERSION,
    CorruptTape,
    InvalidRecord,
    NotATape,
    TapeError,
    decode_payload,
    encode_record,
)
from .reader import CorruptRecord, ScanResult, TapeReader, TornTail, scan
from .writer import (
    Recovery,
    TapeClosed,
    TapeLocked,
    TapeStats,
    TapeWriteFailed,
    TapeWriter,
    TapeWriterSync,
    open_for_append,
)

__all__ = [
    "FRAME",
    "FRAME_SIZE",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_RECORD",
    "RUNBOOK",
    "VERSION",
    "CorruptRecord",
    "CorruptTape",
    "InvalidRecord",
    "NotATape",
    "Recovery",
    "ScanResult",
    "TapeClosed",
    "TapeError",
    "TapeLocked",
    "TapeReader",
    "TapeStats",
    "TapeWriteFailed",
    "TapeWriter",
    "TapeWriterSync",
    "TornTail",
    "decode_payload",
    "encode_record",
    "open_for_append",
    "scan",
]
