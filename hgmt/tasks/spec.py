"""The declarations a task module makes besides its numeric core (hgmt/tasks/__init__.py
lists the whole interface): how each metric protocol's numbers of the task are shown."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Headline:
    """How a task's numbers under one metric protocol are shown and compared."""

    metrics: tuple[str, ...]  # one-number metrics: logs, TensorBoard, tables, best checkpoint
    compare: str  # the one the task-combination study compares (hgmt.report)
    higher_is_better: bool
    label: str  # its name in the study's tables and charts
    per_item: str | None = None  # key of the per-item breakdown ({item name: value})
    item: str | None = None  # what an item is ("joint", "part"): one table per kind
    item_format: str = ".3f"  # format of a per-item value in the evaluation tables
