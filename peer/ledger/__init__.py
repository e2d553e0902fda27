"""The ledger role: the trio service around the ledger core and its HTTP API."""
