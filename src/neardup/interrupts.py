"""Ctrl-C that tells the truth: deferred during commits, never swallowed, and a ledger of what was kept.

A terminal's Ctrl-C (SIGINT) normally raises ``KeyboardInterrupt`` wherever the main thread happens
to be. Three places make that unsafe, and this module handles each:

* **inside a commit** -- DuckDB may finish the ``COMMIT`` and still raise "Query interrupted", so
  nobody knows whether the change landed. :func:`critical` defers the interrupt until the block
  ends; the commit then succeeds or fails on its own and the interrupt is raised right after.
* **inside an import** -- a ``KeyboardInterrupt`` raised while a library lazily imports another
  (pyarrow importing pandas) can be swallowed. The handler defers it and re-delivers it once the
  import is done. One that C code swallows anyway (reported as "Exception ignored", e.g. inside a
  DuckDB call back into Python) is re-delivered the same way, silently.
* **anywhere else it gets swallowed** -- in the CLI (:func:`install`) an interrupt is sticky: the
  next transaction refuses to start or commit (:func:`checkpoint`), and ``neardup``'s ``main()``
  exits 130 even if the command ran on.

:func:`record` keeps a ledger of every change committed in this process, so after an interrupt
the CLI prints one line that says exactly what was kept (:func:`outcome_line`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from typing import Any, Iterator

_MAIN = threading.main_thread()


class _State:
    installed = False          # the CLI's handler is in place for the whole command (sticky interrupts)
    requested = False          # a SIGINT arrived during this command (CLI mode)
    pending = False            # a SIGINT was deferred and still has to be raised
    depth = 0                  # nesting of critical sections
    exiting = False            # main() is already reporting an interrupt: further SIGINTs are ignored
    ledger: dict[str, int] = {}          # template -> count (templates with "{n}") or 1
    order: list[str] = []
    hint: str | None = None
    watcher: threading.Thread | None = None
    previous: Any = None
    previous_hook: Any = None
    in_hook = False            # inside the unraisable hook: never raise there
    not_before = 0.0           # monotonic time before which a swallowed interrupt is not re-delivered
    cli_process = False        # this process is the `neardup` command (not a library user)


_S = _State()


def _in_import(frame: Any) -> bool:
    """Whether ``frame`` (or a caller) is executing an import: a KeyboardInterrupt there may be lost."""
    f = frame
    while f is not None:
        if f.f_code.co_filename.startswith("<frozen importlib"):
            return True
        f = f.f_back
    return False


def _redeliver_after_import() -> None:
    """Watcher thread: once the main thread has left every import and critical section, deliver the
    deferred (or swallowed) SIGINT again."""
    import _thread

    while _S.pending and not _S.exiting:
        frame = sys._current_frames().get(_MAIN.ident or -1)
        if frame is None:
            return
        if _S.depth == 0 and not _S.in_hook and time.monotonic() >= _S.not_before and not _in_import(frame):
            _thread.interrupt_main(signal.SIGINT)
            return
        time.sleep(0.005)


def _start_watcher() -> None:
    if _S.watcher is None or not _S.watcher.is_alive():
        _S.watcher = threading.Thread(target=_redeliver_after_import, name="neardup-sigint", daemon=True)
        _S.watcher.start()


def _unraisable(info: Any) -> None:
    """A KeyboardInterrupt that C code could not propagate (it reports it as "Exception ignored"):
    say nothing, and deliver the interrupt again from a place that can raise it."""
    if _S.installed and isinstance(info.exc_value, KeyboardInterrupt):
        _S.requested = True
        if not _S.exiting:
            _S.pending = True
            _S.not_before = time.monotonic() + 0.02   # let the C code that swallowed it return first
            _S.in_hook = True
            try:
                _start_watcher()
            finally:
                _S.in_hook = False
        return
    (_S.previous_hook or sys.__unraisablehook__)(info)


def _handler(signum: int, frame: Any) -> None:
    """SIGINT: raise KeyboardInterrupt now, or defer it (commit in progress, import in progress)."""
    if _S.installed:
        _S.requested = True
    if _S.exiting:
        return
    if _S.depth > 0 or _S.in_hook:
        _S.pending = True
        return
    if _in_import(frame):
        _S.pending = True
        _start_watcher()
        return
    _S.pending = False
    raise KeyboardInterrupt


def install() -> None:
    """Take over SIGINT for a CLI command (main thread only): deferrals, sticky interrupts, a fresh ledger.

    A Ctrl-C that arrived while the `neardup` command was starting (noted by ``neardup/__init__``)
    counts as requested."""
    pkg = sys.modules.get("neardup")
    _S.cli_process = bool(getattr(pkg, "_cli_process", False))
    early = getattr(pkg, "_early_sigint", None)
    _S.installed = True
    _S.requested = bool(early)
    if early:
        early.clear()
    _S.pending = _S.exiting = False
    _S.depth = 0
    _S.ledger, _S.order, _S.hint = {}, [], None
    _S.previous = signal.getsignal(signal.SIGINT)
    _S.previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable
    if _S.previous is not signal.SIG_IGN:  # started with Ctrl-C ignored (`cmd &` in a script): keep it so
        signal.signal(signal.SIGINT, _handler)


def uninstall() -> None:
    """The command is over: give SIGINT back to its earlier handler, or in the `neardup` process
    ignore it (the command finished: a late Ctrl-C must not turn exit 0 into a kill by SIGINT)."""
    _S.installed = False
    _S.exiting = _S.pending = False
    if sys.unraisablehook is _unraisable:
        sys.unraisablehook = _S.previous_hook or sys.__unraisablehook__
    if threading.current_thread() is _MAIN:
        if _S.cli_process:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGINT, _S.previous if _S.previous is not None else signal.default_int_handler)


def requested() -> bool:
    """Whether Ctrl-C was pressed during this CLI command (even if something swallowed it)."""
    return _S.requested


def stop_listening() -> None:
    """The command is ending because of an interrupt: further Ctrl-Cs must not break the report."""
    _S.exiting = True


def checkpoint() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed (CLI) and somehow not acted on: never commit after it."""
    if _S.installed and _S.requested and _S.depth == 0 and not _S.exiting:
        raise KeyboardInterrupt


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Defer Ctrl-C until the block ends (a commit and its bookkeeping), then raise it.

    Works for library callers too: in the main thread with Python's default handler in place,
    the deferring handler is installed for the duration of the block.
    """
    swapped = None
    if not _S.installed and threading.current_thread() is _MAIN:
        with contextlib.suppress(ValueError, TypeError):
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                swapped = signal.signal(signal.SIGINT, _handler)
    _S.depth += 1
    try:
        yield
    except BaseException as exc:
        _leave(swapped)
        if _deliver_now() and not isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt from exc
        raise
    _leave(swapped)
    if _deliver_now():
        raise KeyboardInterrupt


def _leave(swapped: Any) -> None:
    _S.depth -= 1
    if swapped is not None:
        signal.signal(signal.SIGINT, swapped)


def _deliver_now() -> bool:
    """At the end of the outermost critical section: is there a deferred interrupt to raise?"""
    if _S.depth == 0 and _S.pending and not _S.exiting:
        _S.pending = False
        return True
    return False


def raise_after() -> None:
    """Inside :func:`critical`: a Ctrl-C was consumed by the protected code (DuckDB reported it as an
    error after the commit landed); raise it when the section ends."""
    _S.pending = True


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is, or stands for, a Ctrl-C (DuckDB turns one into ``RuntimeError: Query interrupted``)."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    text = str(exc).lower()
    return (_S.installed and _S.requested) or "query interrupted" in text or "interrupt error" in text


def record(template: str, n: int = 1) -> None:
    """Note a committed change (``"catalogued {n} file(s)"``; counts of one template add up)."""
    if template not in _S.ledger:
        _S.order.append(template)
        _S.ledger[template] = 0
    _S.ledger[template] += n


def hint(text: str) -> None:
    """What to run after an interrupt (added to the outcome line)."""
    _S.hint = text


def committed() -> list[str]:
    """The changes committed in this command so far, in order (ledger entries, counts filled in)."""
    return [t.format(n=f"{_S.ledger[t]:,}") if "{n}" in t else t for t in _S.order]


def outcome_line() -> str:
    """One true line for an interrupted command: what was committed before the stop, or nothing."""
    done = committed()
    if not done:
        line = "interrupted: nothing was changed (the catalog is as it was before this command)"
    else:
        line = "interrupted: committed before the stop and kept: " + "; ".join(done) + "; nothing else was written"
    if _S.hint and done:
        line += f" ({_S.hint})"
    return line
