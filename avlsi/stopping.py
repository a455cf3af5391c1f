"""Stopping on SIGTERM / SIGINT: the run ends KILLED with one line, never mid C-call.

Python runs a signal handler between two bytecodes of the main thread, which may be Python
code that TensorFlow's C++ called back (a nested structure being flattened, say). An
exception raised there can reach C code that does not expect it (once seen here as
"SystemError: Objects/listobject.c:338: bad argument to internal function" instead of
"terminated"). So inside Keras' loops (`deferred()`), the handler only notes the signal and
`StopOnSignal`, a callback, raises it between two batches; elsewhere it raises at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from avlsi.errors import Terminated

_state = {"deferring": 0, "pending": None}


def _interruption(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _on_signal(signum: int, frame) -> None:
    if signum == signal.SIGTERM:
        signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    if _state["deferring"] and _state["pending"] is None:
        _state["pending"] = signum  # raised by raise_if_pending() at the next batch's end
        return
    raise _interruption(signum)


def install_handlers() -> None:
    """SIGTERM raises `Terminated` (a KeyboardInterrupt), SIGINT KeyboardInterrupt; not over
    a launcher's own handlers, and only in the main thread (where Python runs them)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)


def raise_if_pending() -> None:
    """Raise the signal that arrived while deferred (called at a point safe to raise at)."""
    signum, _state["pending"] = _state["pending"], None
    if signum is not None:
        raise _interruption(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Signals arriving inside are raised by `raise_if_pending()`, or on leaving."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
    if not _state["deferring"]:
        raise_if_pending()
