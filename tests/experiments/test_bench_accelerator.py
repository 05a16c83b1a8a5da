"""experiments/bench_accelerator.py on the CPU backend (its fallback: tiny shapes), as CI runs it: every case and the
PyTorch column produce a row with finite numbers, the MFU is a fraction of the chip peak (measured here: no data
sheet for a CPU), and the table is written. Nothing about time is asserted."""
import importlib.util
import re

import pytest

from tests.utils import REPO


@pytest.mark.slow
def test_bench_accelerator_cpu_fallback(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("bench_accelerator", REPO / "experiments" / "bench_accelerator.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "table.md"
    lines = bench.main(["--steps", "1", "--warmup", "1", "--torch", "--depth", "1", "--out", str(out)])
    assert out.read_text().splitlines() == lines
    assert "no data-sheet peak known; MFU against the measured bf16 matmul peak" in lines[2]
    rows = [line for line in lines if line.startswith("| ") and not line.startswith(("| case", "|---"))]
    assert [r.split(" | ")[0][2:] for r in rows] == list(bench.CASES)  # one attention path (xla) on CPU
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert "failed" not in r, r
        step_ms, rate, mfu = float(cells[3]), float(cells[4].replace(",", "")), float(cells[5].rstrip("%"))
        assert step_ms > 0 and rate > 0 and 0 < mfu < 100, r
        assert float(cells[6].replace(",", "")) > 0  # XLA's planned memory
        if cells[0] in ("ss_flow_L", "partpacker_dit", "ss_vae", "dinov2_vitl14_reg"):
            assert re.fullmatch(r"\d+\.\d", cells[8]), r  # the PyTorch mirror ran
