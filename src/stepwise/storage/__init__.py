"""Storage backends behind one interface; `open_storage(url)` picks one."""

from .base import Storage, open_storage

__all__ = ["Storage", "open_storage"]
