"""The training commands of the CLI (``train``, ``evaluate``); filled in by the training feature."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    return None
