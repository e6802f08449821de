"""``--workers N``: a pre-fork supervisor. The parent binds every socket, forks N workers that each serve
their own (slot) socket of each entry point (the kernel spreads new connections over them, SO_REUSEPORT),
replaces a worker that dies in its slot, and fans SIGHUP and SIGTERM/SIGINT out to the workers.

Each worker is a whole gateway: it inherited the parent's loaded configuration, watches conf.d itself and
reloads on SIGHUP. What a worker's exit means beyond a replacement (its metrics) is the caller's:
``on_exit(pid)`` (cli/serve.py drops its live gauges from prometheus_client's multiprocess directory).

All forks happen in the parent's main greenlet, so a forked worker never inherits a pending parent timer.
The parent starts no background work either (cli/serve.py's run): a thread or greenlet started before
fork() is dead in the child, or worse, half-copied. Each worker starts its own conf.d watcher and key-set
fetchers in serve_process, and gatekeeper.jwt.remote resets every shared key set after any fork.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import gevent
import gevent.event
import gevent.os

log = logging.getLogger("gatekeeper.workers")
QUICK_DEATH = 1.0   # a worker dying sooner than this after its start is replaced only after this pause
KILL_MARGIN = 5.0   # after the grace, workers still running are killed


class Supervisor:
    """Keeps ``count`` workers running ``work(slot)`` until told to stop; a replacement takes the slot (its
    sockets, with SO_REUSEPORT listeners) of the worker it replaces."""

    def __init__(self, count: int, work: Callable[[int], int], grace: float, listeners: Sequence[socket.socket],
                 on_exit: Optional[Callable[[int], None]] = None) -> None:
        self.count, self.work, self.grace, self.listeners = count, work, grace, listeners
        self.on_exit_hook = on_exit
        self.workers: Dict[int, Tuple[float, int]] = {}   # pid -> (start time, slot)
        self.exited: List[Tuple[float, int]] = []         # (start time, slot) of workers that exited, to replace
        self.changed = gevent.event.Event()
        self.stopping = False
        self.handlers: List[Any] = []

    # -- parent side -------------------------------------------------------------------------------
    def run(self, announce: Callable[[], None]) -> int:
        self.handlers = [gevent.signal_handler(signal.SIGHUP, self.fan_out, signal.SIGHUP),
                         gevent.signal_handler(signal.SIGTERM, self.stop),
                         gevent.signal_handler(signal.SIGINT, self.stop)]
        for slot in range(self.count):
            self.spawn(slot)
        announce()
        while not self.stopping:
            self.changed.wait(1.0)  # a timeout keeps the hub from deciding nothing can wake us (LoopExit)
            self.changed.clear()
            self.replace_exited()
        return self.shutdown()

    def spawn(self, slot: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = gevent.os.fork_and_watch(self.on_exit, ref=True)
        if pid == 0:
            self.become_worker(slot)
        self.workers[pid] = (time.monotonic(), slot)
        log.info("worker %d started", pid)

    def on_exit(self, watcher: Any) -> None:
        """Child watcher callback (runs in the hub): note the exit and wake the main greenlet."""
        worker = self.workers.pop(watcher.pid, None)
        if self.on_exit_hook is not None:
            self.on_exit_hook(watcher.pid)
        if worker is not None and not self.stopping:
            log.error("worker %d exited (status %d); replacing it", watcher.pid, watcher.rstatus)
            self.exited.append(worker)
        self.changed.set()

    def replace_exited(self) -> None:
        while self.exited and not self.stopping:
            started, slot = self.exited.pop()
            if time.monotonic() - started < QUICK_DEATH:
                gevent.sleep(QUICK_DEATH)  # a worker failing at once must not become a fork loop
                if self.stopped_meanwhile():
                    return
            self.spawn(slot)

    def stopped_meanwhile(self) -> bool:
        """Whether a stop arrived while this greenlet slept (a method, so a type checker does not take
        the loop's test for the value after the sleep)."""
        return self.stopping

    def fan_out(self, signum: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        self.stopping = True
        self.changed.set()

    def shutdown(self) -> int:
        """Close the parent's copies of the sockets (so nothing queues for nobody), stop the workers."""
        for sock in self.listeners:
            sock.close()
        self.fan_out(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + KILL_MARGIN
        while self.workers and time.monotonic() < deadline:
            self.changed.wait(0.1)
            self.changed.clear()
        if self.workers:
            log.error("workers %s still running after the grace period; killing them", sorted(self.workers))
            self.fan_out(signal.SIGKILL)
        return 0

    # -- child side --------------------------------------------------------------------------------
    def become_worker(self, slot: int) -> None:
        """In the forked child: drop the parent's signal handlers and state, serve, and never return."""
        for handler in self.handlers:
            handler.cancel()
        # Held, not ignored, until the worker's own handler is in place: a reload asked for while the
        # worker starts is delivered then instead of being lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        self.workers.clear()
        self.exited.clear()
        code = 1
        try:
            code = self.work(slot)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def supervise(count: int, work: Callable[[int], int], *, grace: float, listeners: Sequence[socket.socket],
              announce: Callable[[], None] = lambda: None, on_exit: Optional[Callable[[int], None]] = None) -> int:
    """Run ``work(slot)`` in ``count`` forked workers (slots 0..count-1) until SIGTERM/SIGINT; 0 when they
    all stopped.

    ``announce()`` runs once the workers are forked and the parent's signal handlers are in place;
    ``on_exit(pid)`` after each worker's exit."""
    return Supervisor(count, work, grace, listeners, on_exit).run(announce)
