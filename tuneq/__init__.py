"""The teammates' side of tuneq: a Python client (`tuneq.client`) and the `tuneq` command."""
