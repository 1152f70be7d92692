"""Benchmark helpers: sizes, the machine's own ceilings (memcpy, device copy) and a summary table.

Every benchmark records `bytes` (what it writes) or `items` (what it produces) in extra_info; the
summary printed at the end turns medians into GB/s or items/s and into ratios against the
ceiling measured in the same run, because these machines are noisy.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

# (name, x shape, player-map shape, n): Shap-CAM sizes and a tabular one.
SIZES = [
    ("vgg16", (512, 14, 14), (14, 14), 196),
    ("resnet50", (2048, 7, 7), (7, 7), 49),
    ("tabular", (30,), (30,), 30),
]
# Bytes of masked output per benchmark call (CPU): big enough to leave the caches.
CPU_BYTES = 64 << 20
TINY = os.environ.get("SHAPCAM_BENCH_TINY") == "1"  # CI's "does it still run" mode


def evals_for(shape, budget=CPU_BYTES, dtype=np.float32):
    per = int(np.prod(shape)) * np.dtype(dtype).itemsize
    b = max(1, budget // per)
    return min(b, 64) if TINY else b


_rows = []


@pytest.fixture
def record(benchmark):
    """record(group, label, bytes=..., items=..., unit=...) after benchmark(...) has run."""

    def _record(group, label, *, bytes=None, items=None, unit="items"):
        benchmark.extra_info.update(group=group, label=label, bytes=bytes, items=items, unit=unit)
        _rows.append((benchmark, group, label, bytes, items, unit))

    return _record


def pytest_terminal_summary(terminalreporter):
    out = []

    def w(line=""):
        terminalreporter.write_line(line)
        out.append(line)

    if _rows:
        w("")
        w("shapcam benchmark summary (median times; ratios within one group and one run)")
        w("")
        w("| group | what | median ms | rate | time per byte vs the ceiling |")
        w("|---|---|---|---|---|")
        groups = {}
        for bm, group, label, nbytes, items, unit in _rows:
            if bm.stats is None:
                continue
            groups.setdefault(group, []).append((label, bm.stats.stats.median, nbytes, items, unit))
        for group, rows in groups.items():
            base = next((r for r in rows if r[0].startswith("memcpy") or r[0].startswith("copy")), None)
            for label, med, nbytes, items, unit in rows:
                rate = f"{nbytes / med / 1e9:.2f} GB/s" if nbytes else f"{items / med / 1e6:.2f} M{unit}/s"
                # time per byte relative to the ceiling's: 1.0 = as fast as the ceiling
                ratio = (f"{(med / nbytes) / (base[1] / base[2]):.2f}x {base[0]}"
                         if base and base[0] != label and nbytes and base[2] else "")
                w(f"| {group} | {label} | {med * 1e3:.3f} | {rate} | {ratio} |")
    _report_extra(w)
    if out and os.environ.get("SHAPCAM_BENCH_WRITE") == "1":
        _write_results(out)


def _machine():
    import platform

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    vers = {}
    for mod in ("numpy", "torch", "torchvision", "captum", "shap", "shapiq", "pytorch_grad_cam"):
        try:
            vers[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 — not installed
            pass
    import shapcam

    return (f"{platform.node()}: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; "
            + ", ".join(f"{k} {v}" for k, v in vers.items()) + f"; shapcam engine {shapcam.engine_info()}")


def _write_results(lines):
    """Replace the CPU section of benchmarks/RESULTS.md (between its markers) with this run."""
    import time

    path = os.path.join(os.path.dirname(__file__), "RESULTS.md")
    start, end = "<!-- make-bench:start -->", "<!-- make-bench:end -->"
    body = "\n".join([start, f"## `make bench` — {time.strftime('%Y-%m-%d %H:%M')}", "", _machine(),
                      *lines, end])
    text = open(path).read() if os.path.exists(path) else "# shapcam benchmark results\n"
    if start in text and end in text:
        text = text[:text.index(start)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    with open(path, "w") as f:
        f.write(text)


def _report_extra(w):
    """Shap-CAM end to end, the Grad-CAM family and the accuracy tables (from bench_shapcam /
    bench_estimator): printed, and returned as Markdown lines."""
    lines = []
    try:
        import bench_shapcam
    except Exception:  # noqa: BLE001 — torch missing: those benchmarks were skipped
        bench_shapcam = None
    if bench_shapcam is not None and bench_shapcam.IDEAL:
        lines += ["", "Shap-CAM end to end (seconds for one 224x224 image; ratios to the ideal = trunk + "
                  "evaluations at the head's best throughput)", "",
                  "| head | K | ideal s | shapcam s | shapcam/ideal | captum s | captum/shapcam | shap s | shap/shapcam |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, rows in bench_shapcam.IDEAL.items():
            if name.endswith("cams"):
                continue
            for K in sorted({k for (_, k) in rows}):
                ide, sc, ca = rows[("ideal", K)], rows[("shapcam", K)], rows[("captum", K)]
                sh = rows.get(("shap", K))
                lines.append(f"| {name} | {K} | {ide:.3f} | {sc:.3f} | {sc / ide:.2f} | {ca:.3f} | {ca / sc:.2f} | "
                             + (f"{sh:.3f} | {sh / sc:.2f} |" if sh else "— | — |"))
        lines += ["", "| model | method | seconds |", "|---|---|---|"]
        for name, rows in bench_shapcam.IDEAL.items():
            if name.endswith("cams"):
                for m, v in rows.items():
                    lines.append(f"| {name[:-5]} | {m} | {v:.4f} |")
    try:
        import bench_estimator
    except Exception:  # noqa: BLE001
        bench_estimator = None
    if bench_estimator is not None and bench_estimator.ACCURACY:
        names = list(bench_estimator.ACCURACY[0][4])
        lines += ["", "Accuracy: mean squared error against the exact values at equal budgets (n = 10)", "",
                  "| game | K | evaluations | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
        for game, n, K, budget, mse in bench_estimator.ACCURACY:
            lines.append(f"| {game} | {K} | {budget} | " + " | ".join(f"{mse[k]:.2e}" for k in names) + " |")
    for line in lines:
        w(line)
    return lines
