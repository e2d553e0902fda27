"""The exchange role: its service (book, authority, tape), HTTP API and fill outbox."""
