"""Fault injection on a running cluster: link filters, the admin endpoint, partition plans and the fault journal."""
