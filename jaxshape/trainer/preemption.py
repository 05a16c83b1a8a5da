"""Preemption: SIGTERM (what a scheduler sends before it kills a host) or SIGINT (Ctrl-C) during training asks the
loop to finish its current step, checkpoint it and return; re-running the command resumes from that step.

One process: a signal handler sets a flag the loop reads after every step. Several processes
(``jax.distributed``): JAX's preemption service (its coordination agent catches SIGTERM and tells every process)
picks one step that all processes reach, ``multihost_utils.reached_preemption_sync_point``; SIGINT is turned into
a SIGTERM of this process so that it takes the same path. Without the service (disabled by
``jax_enable_preemption_service``), the processes share their flags with one all-gather per step.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Optional

import jax
import numpy as np

log = logging.getLogger("jaxshape.train")


def _sync_manager():
    try:
        from jax._src import distributed
    except ImportError:  # pragma: no cover -- a future jax without the private module: fall back to all-gathers
        return None
    return getattr(distributed.global_state, "preemption_sync_manager", None)


class PreemptionWatcher:
    """Context manager: ``with PreemptionWatcher() as w: ... if w.should_stop(step): checkpoint, break``.

    ``should_stop`` must be called by every process after every step (a collective in multi-process runs without
    JAX's preemption service). The previous handlers come back on exit. Outside the main thread (no signals can be
    caught there) the watcher watches nothing."""

    def __init__(self):
        self.signal: Optional[int] = None  # the signal received (this process)
        self._previous: dict = {}
        self._multi = jax.process_count() > 1
        self._service = _sync_manager() if self._multi else None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _on_signal(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signum
        log.warning("received %s: finishing the current step, then checkpointing and stopping",
                    signal.Signals(signum).name)

    def _sigint_as_sigterm(self, signum, frame):
        self.signal = signum
        os.kill(os.getpid(), signal.SIGTERM)  # JAX's agent catches SIGTERM and tells every process

    def __enter__(self) -> "PreemptionWatcher":
        if threading.current_thread() is not threading.main_thread():
            return self
        if self._service is not None:
            handlers = {signal.SIGINT: self._sigint_as_sigterm}
        else:
            handlers = {signal.SIGTERM: self._on_signal, signal.SIGINT: self._on_signal}
        for sig, handler in handlers.items():
            self._previous[sig] = signal.signal(sig, handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint ``step`` and stop (the same answer on every process)."""
        if not self._multi:
            return self.requested
        if self._service is not None:
            from jax.experimental import multihost_utils

            stop = multihost_utils.reached_preemption_sync_point(step)
            if stop and self.signal is None:
                self.signal = signal.SIGTERM
            return stop
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([int(self.requested)], np.int32))
        return bool(np.any(flags))
