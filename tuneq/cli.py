"""The `tuneq` command."""

from __future__ import annotations


def main() -> None:
    from app.cli import main as operator_main

    operator_main()
