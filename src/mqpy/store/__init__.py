"""Durable storage behind one async interface; `open_store` picks the backend."""

from __future__ import annotations

from pathlib import Path

from mqpy.store.base import Store
from mqpy.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "open_store"]


def open_store(data_dir: Path) -> Store:
    """The embedded default: a SQLite database in WAL mode under `data_dir`."""
    return SQLiteStore(data_dir)
