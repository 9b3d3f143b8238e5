"""A function over many items in worker processes, where a dying worker costs one item.

``concurrent.futures.ProcessPoolExecutor`` breaks as a whole when one worker dies (killed for
memory, a crash inside a decoder plugin): every later item fails with it. Here each worker
takes one item at a time over its own pipe, so when one dies the item it held is known: it is
reported with the cause (``worker died: signal 9 (SIGKILL)``), a new worker takes its place,
and the rest go on.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait


def _serve(conn: Connection, fn: Callable, initializer: Callable | None) -> None:
    if initializer is not None:
        initializer()
    while (item := conn.recv()) is not None:
        conn.send((fn(item),))


def death(exitcode: int | None) -> str:
    """Why a worker process ended: ``worker died: signal 9 (SIGKILL)`` or ``... exit code 3``."""
    if exitcode is not None and exitcode < 0:
        try:
            name = f" ({signal.Signals(-exitcode).name})"
        except ValueError:
            name = ""
        return f"worker died: signal {-exitcode}{name}"
    return f"worker died: exit code {exitcode}"


def isolated_map(
    fn: Callable, items: Iterable, workers: int, initializer: Callable | None = None
) -> Iterator[tuple[object, object, str | None]]:
    """``(item, fn(item), None)`` for each item, in the order they finish, computed in
    ``workers`` processes; ``(item, None, reason)`` for an item whose worker died on it.
    ``fn`` handles its own errors (an exception in it ends its worker: reported the same way).
    """
    todo = iter(items)
    busy: dict[Connection, tuple[mp.Process, object]] = {}

    def start() -> tuple[Connection, mp.Process]:
        parent, child = mp.Pipe()
        process = mp.Process(target=_serve, args=(child, fn, initializer), daemon=True)
        process.start()
        child.close()
        return parent, process

    def give(conn: Connection, process: mp.Process) -> None:
        item = next(todo, _DONE)
        try:
            conn.send(None if item is _DONE else item)
        except OSError:  # the worker is gone (it died after its last answer): a new one
            conn.close()
            process.join()
            conn, process = start()
            conn.send(None if item is _DONE else item)
        if item is _DONE:
            conn.close()
            process.join()
        else:
            busy[conn] = (process, item)

    try:
        for _ in range(max(1, workers)):
            give(*start())
        while busy:
            sentinels = {process.sentinel: conn for conn, (process, _) in busy.items()}
            for ready in wait([*busy, *sentinels]):
                conn = sentinels.get(ready, ready)
                if conn not in busy:
                    continue  # both its pipe and its sentinel were ready: handled once
                process, item = busy.pop(conn)
                result, died = None, True
                try:
                    if conn.poll():  # its answer, or the end of a pipe whose worker died
                        (result,), died = conn.recv(), False
                except (EOFError, OSError):
                    pass
                if died:
                    process.join()
                    conn.close()
                    yield item, None, death(process.exitcode)
                    give(*start())
                else:
                    yield item, result, None
                    give(conn, process)
    finally:
        for conn, (process, _) in busy.items():
            process.kill()
            conn.close()


_DONE = object()
