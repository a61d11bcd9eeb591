"""Storage backends behind one interface; `open_storage(url)` picks one."""

from .base import Storage, StorageUnavailable, Tx, open_storage

__all__ = ["Storage", "StorageUnavailable", "Tx", "open_storage"]
