"""Package names resolved on first use (PEP 562), so that importing a package stays light.

Owns the module ``__getattr__`` that packages with heavy members (torch, aiohttp, the demo's
training code) install: a name listed in the package's table is imported from its home module
when first read; any other name is an AttributeError as usual. The names themselves and their
``__all__`` stay in each package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_attributes(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` for ``package``: each name in ``homes`` comes from the module it maps to."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(home), name)

    return __getattr__


__all__ = ["lazy_attributes"]
