"""The face registry behind register / identify / forget.

`VectorStore` is the interface; a store is opened from its DSN: none (a local store under
the data dir), `sqlite:///path` (a local store at that path) or `postgresql://...` (a
pgvector store that several gateways can share).
"""
import pathlib

from face_contract.errors import InvalidInput

from .base import (Filters, Person, PersonFilters, Record,  # noqa: F401  (the interface)
                   VectorStore)
from .local import LocalStore, StoreInUse, StoreOpenError  # noqa: F401
from .pgvector import PgVectorStore, redacted

PGVECTOR_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite:///"


def check_dsn(name: str, dsn: str | None) -> None:
    """ValueError naming the store when its DSN is of no kind we know."""
    if dsn is not None and not dsn.startswith((*PGVECTOR_SCHEMES, SQLITE_SCHEME)):
        shown = redacted(dsn) if "://" in dsn else dsn
        raise ValueError(f"store {name}: DSN {shown!r} is neither postgresql://... (pgvector) "
                         "nor sqlite:///path (local)")


def open_store(name: str, dsn: str | None, data_dir: pathlib.Path,
               ann_threshold: int | None = None) -> VectorStore:
    check_dsn(name, dsn)
    if dsn is None:
        return LocalStore(pathlib.Path(data_dir) / f"{name}.sqlite3", name, ann_threshold)
    if dsn.startswith(SQLITE_SCHEME):  # sqlite:///relative or sqlite:////absolute
        return LocalStore(pathlib.Path(dsn[len(SQLITE_SCHEME):]), name, ann_threshold)
    return PgVectorStore(dsn, name)


class Stores(dict):
    """The configured stores by name, and which one a request naming none uses."""

    def __init__(self, stores: dict[str, VectorStore], default: str | None = None):
        super().__init__(stores)
        self.default = default or (
            "local-store" if "local-store" in stores else next(iter(stores)))

    def close(self) -> None:
        for store in self.values():
            store.close()


def open_stores(data_dir: pathlib.Path, specs, default: str | None = None,
                ann_threshold: int | None = None) -> Stores:
    """specs: {name: DSN or None}, or store names (local stores under data_dir)."""
    specs = specs if isinstance(specs, dict) else dict.fromkeys(specs)
    opened: dict[str, VectorStore] = {}
    try:
        for name, dsn in specs.items():
            opened[name] = open_store(name, dsn, data_dir, ann_threshold)
    except BaseException:
        for store in opened.values():  # release the ones opened (their locks) before failing
            store.close()
        raise
    return Stores(opened, default)


def require(stores: Stores, name: str | None) -> VectorStore:
    """The named store (default: the configured default store); unknown: 400."""
    name = stores.default if name is None else name
    if name not in stores:
        raise InvalidInput(f"unknown store '{name}' (configured: {', '.join(stores)})")
    return stores[name]
