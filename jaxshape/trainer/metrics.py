"""Metric writers: JSONL always, TensorBoard when tensorboardX is installed. Only process 0 writes."""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("jaxshape.train")


class MetricWriter:
    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        workdir = Path(workdir)
        self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tensorboard"))
        except ImportError:
            log.info("tensorboardX not installed: metrics go to metrics.jsonl only")

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        try:
            self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        except OSError as e:  # a full disk: training goes on; the next checkpoint write reports it
            log.warning("could not write metrics of step %d to metrics.jsonl: %s", step, e)
        if self._tb is not None and not _writer_alive(self._tb):
            log.warning("the TensorBoard writer stopped (a full disk?); metrics go to metrics.jsonl only")
            self._tb = None
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._jsonl is not None:
            try:
                self._jsonl.close()
            except OSError as e:
                log.warning("closing metrics.jsonl: %s", e)
        if self._tb is not None and _writer_alive(self._tb):
            self._tb.close()


def _writer_alive(tb) -> bool:
    """Whether tensorboardX's background writer thread still runs: once a write failed (ENOSPC) it is gone and
    ``add_scalar`` would block forever on its full queue."""
    writer = getattr(getattr(tb, "file_writer", None), "event_writer", None)
    worker = getattr(writer, "_worker", None)
    return worker is None or worker.is_alive()
