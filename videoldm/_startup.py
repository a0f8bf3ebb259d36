"""Process start-up and exit costs of the command line, which dominate a short ``videoldm generate``.

Importing torch and diffusers creates millions of objects; the cyclic garbage collector runs over
all of them again and again while they are created (about 1.3 s of a 5 s import here), and once more
when the interpreter exits (about 1.5 s). Neither pass finds garbage worth the time: these objects
live as long as the process.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


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


def skip_exit_collection() -> None:
    """Move every live object out of the collector's reach (``gc.freeze``), so the interpreter's
    exit does not traverse them. Only for a process that is about to exit: frozen objects are never
    collected. ``atexit`` handlers, ``weakref.finalize`` callbacks and stream flushing still run."""
    gc.freeze()
