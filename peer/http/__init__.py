"""HTTP plumbing every role shares: the server, the client, the common endpoints, request validation."""
