"""Storage backends behind one interface; `open_storage(url)` picks one."""

from .base import Storage, Tx, open_storage

__all__ = ["Storage", "Tx", "open_storage"]
