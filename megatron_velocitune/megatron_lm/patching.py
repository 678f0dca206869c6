"""Wrap module (or class) attributes, remember the originals, undo in reverse order.

Megatron-LM has no plugin hooks; its functions call each other through module globals looked up
at call time, so replacing ``module.name`` reaches every caller without editing a file. Each
wrapper carries ``__velocitune_original__`` so installing twice is a no-op and a wrapper can be
recognised (the tests check that every integration point is wrapped).
"""

import functools
from typing import Any, Callable, List, Tuple

__all__ = ["Patcher", "is_wrapped", "original_of"]

_ORIGINAL = "__velocitune_original__"


def is_wrapped(fn: Any) -> bool:
    """Whether ``fn`` is a wrapper made by :class:`Patcher`."""
    return hasattr(fn, _ORIGINAL)


def original_of(fn: Any) -> Any:
    """The function a :class:`Patcher` wrapper replaced (``fn`` itself when not wrapped)."""
    return getattr(fn, _ORIGINAL, fn)


class Patcher:
    """Replaces attributes with wrappers and restores them.

    ``wrap(owner, name, make_wrapper)`` sets ``owner.name = make_wrapper(original)``, unless it is
    already one of ours.
    """

    def __init__(self) -> None:
        self._patches: List[Tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, make_wrapper: Callable[[Callable], Callable]) -> None:
        """Wrap ``owner.name``.

        Args:
            owner: a module or class.
            name (str): the attribute.
            make_wrapper (Callable[[Callable], Callable]): takes the original, returns the
                replacement.

        Raises:
            AttributeError: ``owner`` has no ``name`` (the integration point moved).
        """
        original = getattr(owner, name)
        if is_wrapped(original):
            return
        wrapper = make_wrapper(original)
        if wrapper is not original:
            functools.update_wrapper(wrapper, original)
        setattr(wrapper, _ORIGINAL, original)
        setattr(owner, name, wrapper)
        self._patches.append((owner, name, original))

    def restore(self) -> None:
        """Put every original back, last wrapped first."""
        while self._patches:
            owner, name, original = self._patches.pop()
            setattr(owner, name, original)

    def __len__(self) -> int:
        return len(self._patches)
