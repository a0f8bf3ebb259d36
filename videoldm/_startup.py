"""Process start-up and exit costs of the command line, which dominate a short ``videoldm generate``.

Importing torch and diffusers creates millions of objects; the cyclic garbage collector runs over
all of them again and again while they are created (about 1.3 s of a 5 s import here), twice more
soon after (0.3 s each), and once more when the interpreter exits (about 1.5 s). None of these
passes finds garbage worth the time: these objects live as long as the process. A library import
only pauses the collector (:func:`garbage_collection_paused`); the ``videoldm`` program also freezes
the objects of its imports (:func:`import_frozen`) and skips the exit pass (:func:`skip_exit_collection`).
"""

from __future__ import annotations

import gc
import importlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator


@contextmanager
def garbage_collection_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector inside the block; restore the caller's setting after it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def import_frozen(modules: tuple[str, ...]) -> None:
    """Import ``modules`` with the collector paused and freeze every live object (``gc.freeze``) before
    it resumes. Resuming after such an import otherwise starts a collection over all its objects at
    once, and a second when they age (0.3 s each here after torch and diffusers), only to find them
    alive. Only for a program's entry point, never a library import: frozen objects are never collected."""
    with garbage_collection_paused():
        for module in modules:
            importlib.import_module(module)
        gc.freeze()


def skip_exit_collection() -> None:
    """Move every live object out of the collector's reach (``gc.freeze``), so the interpreter's
    exit does not traverse them. Only for a process that is about to exit: frozen objects are never
    collected. ``atexit`` handlers, ``weakref.finalize`` callbacks and stream flushing still run."""
    gc.freeze()


def lazy_exports(package: str, public: dict[str, str], namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's PEP 562 ``__getattr__`` and ``__dir__``: each name of ``public`` (name -> the module, relative to
    ``package``, that defines it) is imported on first access, with the collector paused (torch and diffusers
    come with most of them), and kept in the package's ``namespace``."""

    def __getattr__(name: str) -> Any:
        if name not in public:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        with garbage_collection_paused():
            value = getattr(importlib.import_module(public[name], package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
