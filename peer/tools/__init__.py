"""What a person or a test runs against a cluster: the launcher, the load client, the checker."""
