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
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
