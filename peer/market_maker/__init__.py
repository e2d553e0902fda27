"""The market-maker role: its pure cores (rendezvous, authority, quoting, answers) and its trio shell."""
