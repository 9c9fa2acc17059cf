"""Click options shared by several commands (defined once)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["AutoOrPositiveInt", "json_option", "seed_option"]


class AutoOrPositiveInt(click.ParamType):
    """``auto`` (returned as None) or an integer >= 1."""

    name = "auto|INTEGER"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int | None:
        if value is None:
            return None
        text = str(value).strip().lower()
        if text == "auto":
            return None
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"Expected 'auto' or an integer >= 1. Got {value!r}.", param, ctx)


def json_option(f: F) -> F:
    """``--json``: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


def seed_option(f: F) -> F:
    """``--seed``: random seed for reproducible output."""
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")(f)
