"""CPU test of the block-timeline summary that `benchmarks/cuda_kernels.py --trace` prints (the
records themselves come from the CUDA PROBE kernel; tests/kernels/test_cuda_kernels.py checks those)."""
import importlib.util
from pathlib import Path

import torch


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_kernels.py"
    spec = importlib.util.spec_from_file_location("cuda_kernels_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _record(g0, c0, lst, stream, red, c1, g1, sm, rows):
    return [g0, c0, lst, stream, red, c1, g1, sm | (rows << 32)]


def test_summary_converts_cycles_with_the_blocks_own_clock_rate():
    # two SMs at 2 cycles per ns; block 1 starts 1000 ns late and has more rows
    recs = torch.tensor([
        _record(10_000, 500, 500 + 2_000, 500 + 8_000, 500 + 9_000, 500 + 10_000, 15_000, sm=0, rows=100),
        _record(11_000, 90, 90 + 4_000, 90 + 12_000, 90 + 13_000, 90 + 14_000, 18_000, sm=1, rows=300),
        _record(10_500, 7, 7 + 2_000, 7 + 6_000, 7 + 7_000, 7 + 9_000, 15_000, sm=1, rows=200),
    ], dtype=torch.int64)
    s = _bench().summarize_trace(recs, row_bytes=256)
    assert s["blocks"] == 3
    assert abs(s["clock_ghz"] - 2.0) < 1e-9  # median of 10000/5000, 14000/7000, 9000/4500
    assert s["span_us"] == 8.0 and s["start_skew_us"] == 1.0 and s["end_skew_us"] == 3.0
    assert s["prologue"] == {"med": 1.0, "max": 2.0}  # 2000/2000/4000 cycles at 2 GHz
    assert s["stream"] == {"med": 3.0, "max": 4.0}  # 6000, 8000, 4000 cycles
    assert s["cluster"] == {"med": 0.5, "max": 1.0}
    assert s["total"]["max"] == 7.0
    assert s["rows"] == {"min": 100, "med": 200, "max": 300}
    assert s["blocks_per_sm"] == {"min": 1, "max": 2, "sms": 2}
    # the block alone on SM 0 streamed 3 us; the two sharing SM 1 streamed 4 and 2 us (lower median: 2)
    assert s["stream_by_sm_load"] == {1: {"blocks": 1, "med": 3.0, "rows": 100}, 2: {"blocks": 2, "med": 2.0, "rows": 200}}
    assert s["gbs"] == round(600 * 256 / 8000, 1)  # bytes of every active row over the span
    assert s["last_block"] == {"start_us": 1.0, "rows": 300, "total_us": 7.0}


def test_table_shows_the_first_launch_of_each_case():
    bench = _bench()
    recs = torch.tensor([_record(0 + 5, 0, 100, 900, 1000, 1200, 605, sm=3, rows=42)], dtype=torch.int64)
    s = bench.summarize_trace(recs, row_bytes=256)
    first = dict(s, shape="o 4096->4096", s2=0.5, rep=0, split=4, knobs={"split": 4}, graph_us=12.5)
    text = bench.trace_table([first, dict(first, rep=1, graph_us=99.0)])
    rows = [line for line in text.splitlines() if line.startswith("o 4096->4096")]
    assert len(rows) == 1 and "split=4" in rows[0] and "12.50" in rows[0] and "99.00" not in rows[0]
    assert "## teal block timelines" in text
