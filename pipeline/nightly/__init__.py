"""``cnnpipe nightly``: scheduled survey processing, each input exactly once.

- :class:`NightlyConfig` - the TOML configuration (schema ``cnnpipe.nightly/1``).
- :func:`run_nightly` - process one night; returns the :class:`NightReport`.
- :class:`Ledger` - finished inputs by (content, models, settings).
"""

from __future__ import annotations

from cnnpipe.pipeline.nightly.config import (
    NIGHTLY_SCHEMA,
    ClusterKind,
    ClusterSpec,
    NightlyConfig,
    QuarantineMode,
    default_night,
)
from cnnpipe.pipeline.nightly.job import JsonFormatter, find_inputs, run_nightly
from cnnpipe.pipeline.nightly.ledger import Entry, EntryStatus, Ledger, ledger_key
from cnnpipe.pipeline.nightly.report import InputOutcome, NightReport

__all__ = [
    "NIGHTLY_SCHEMA",
    "ClusterKind",
    "ClusterSpec",
    "Entry",
    "EntryStatus",
    "InputOutcome",
    "JsonFormatter",
    "Ledger",
    "NightReport",
    "NightlyConfig",
    "QuarantineMode",
    "default_night",
    "find_inputs",
    "ledger_key",
    "run_nightly",
]
