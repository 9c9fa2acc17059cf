"""Click options shared by several commands (defined once)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["json_option", "seed_option"]


def json_option(f: F) -> F:
    """``--json``: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


def seed_option(f: F) -> F:
    """``--seed``: random seed for reproducible output."""
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")(f)
