"""Name -> constructor registries (backbones, models, codecs).

Modelled on timm/CompressAI: constructors register themselves with a decorator, creation by
name drops ``None`` keyword arguments, and an unknown name fails with the list of known ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from mdfr.errors import UsageError

T = TypeVar("T", bound=Callable[..., Any])


class UnknownNameError(UsageError, KeyError):
    """Raised for a name that is not registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A named collection of constructors.

    Args:
        kind: what the registry holds ("backbone", "codec", ...), used in messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(fn: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        known = ", ".join(sorted(self._items)) or "(none registered)"
        close = difflib.get_close_matches(name, list(self._items), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {known}"

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Build ``name``, dropping ``None`` kwargs so callers can pass optional settings blindly."""
        return self.get(name)(*args, **{k: v for k, v in kwargs.items() if v is not None})

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


# The registries the product uses. Their members live next to their implementations
# (mdfr/models/..., mdfr/data/codecs.py) and register on import of those modules.
BACKBONES: Registry[Callable[..., Any]] = Registry("backbone")
MODELS: Registry[Callable[..., Any]] = Registry("model")
CODECS: Registry[Callable[..., Any]] = Registry("codec")


# Table I's backbones, in the paper's order (reports sort by it).
PAPER_BACKBONES: tuple[str, ...] = ("remnet", "res2net50", "resnet50", "mobilenet", "dpec_convnext")

# The backbones mdfr.models registers, named here so a sweep file's backbones can be checked
# without importing torch (`mdfr sweep validate` in a fraction of a second).
# tests/test_registry.py fails when this list and the filled registry disagree.
BUILTIN_BACKBONES: tuple[str, ...] = (
    "dpec_convnext",
    "mobilenet",
    "remnet",
    "res2net50",
    "resnet50",
    "small_remnet",
    "test_dpec_convnext",
    "test_mobilenet",
    "test_remnet",
    "test_res2net",
    "test_resnet",
)


def backbone_names() -> list[str]:
    """Registered backbone names (imports the model package, which fills the registry)."""
    # Lazy: the model package imports torch; callers that must stay light use
    # known_backbone_names().
    import mdfr.models  # noqa: F401  (registration side effect)

    return BACKBONES.names()


def known_backbone_names() -> list[str]:
    """The built-in backbones and any registered so far, without importing torch."""
    return sorted(set(BUILTIN_BACKBONES) | set(BACKBONES.names()))


def codec_names() -> list[str]:
    """Registered codec scheme names (``jpeg``, ``compressai``, ...)."""
    # Lazy: mdfr.data.codecs imports this module (to register), so it cannot be imported at
    # the top; it imports numpy only, not torch.
    import mdfr.data.codecs  # noqa: F401  (registration side effect)

    return CODECS.names()
