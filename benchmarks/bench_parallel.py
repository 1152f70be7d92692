"""Past one process: executor= scaling on an expensive game, games with 10^4 / 10^5 players, and the
cost of the fixed-shape (blocked) sum that makes distributed results bit-identical.

Everything is measured side by side in one run (ratios are what to read on a noisy machine):
  - scaling: one game whose every value_fn call costs a fixed wait (a stand-in for a remote model
    call: it does not use this machine's 2 cores) and one that trains a scikit-learn model per
    coalition (CPU-bound), serially and on 1, 2, 4 worker processes (and a 2-worker Dask
    LocalCluster); speedup = serial / parallel, efficiency = speedup / workers;
  - players: n = 10^4 and 10^5 on a cheap value function, evaluations per second and peak memory
    (a child process's ru_maxrss growth);
  - the blocked sum: ops.accumulate with blocks of 16 samples against one running state.

    pytest benchmarks/bench_parallel.py -s       # SHAPCAM_BENCH_TINY=1: tiny sizes
"""
import concurrent.futures as cf
import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import TINY

import shapcam  # noqa: E402
from shapcam import ops  # noqa: E402
from shapcam.estimator import BLOCK_SAMPLES  # noqa: E402

ROWS = {"scaling": [], "players": [], "blocked": []}
WAIT_S = 0.02 if not TINY else 0.002


class Waiting:
    """A value function whose every call waits WAIT_S (a remote model call), values additive."""

    def __init__(self, n):
        self.w = np.linspace(-1, 1, n)

    def __call__(self, masks):
        time.sleep(WAIT_S)
        return masks @ self.w


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _scaling_case(label, game, n, K, batch_size):
    # executor= runs the permutation designs; the serial reference names the same one
    t1, ref = _timed(lambda: shapcam.estimate_shapley(game, n, K=K, seed=0, batch_size=batch_size,
                                                      sampler="stratified"))
    rows = [{"game": label, "engine": "serial", "workers": 1, "s": t1, "speedup": 1.0,
             "efficiency": 1.0, "identical": True}]
    for w in ([1, 2, 4] if not TINY else [2]):
        with cf.ProcessPoolExecutor(w) as ex:
            ex.submit(int).result()  # processes started before the clock
            tw, res = _timed(lambda: shapcam.estimate_shapley(game, n, K=K, seed=0, sampler="stratified",
                                                              batch_size=batch_size, executor=ex))
        rows.append({"game": label, "engine": "ProcessPool", "workers": w, "s": tw,
                     "speedup": t1 / tw, "efficiency": t1 / tw / w,
                     "identical": bool(np.array_equal(res.values, ref.values))})
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        return rows
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                      silence_logs=50) as cluster, Client(cluster) as client:
        tw, res = _timed(lambda: shapcam.estimate_shapley(game, n, K=K, seed=0, sampler="stratified",
                                                          batch_size=batch_size, executor=client))
    rows.append({"game": label, "engine": "Dask LocalCluster", "workers": 2, "s": tw,
                 "speedup": t1 / tw, "efficiency": t1 / tw / 2,
                 "identical": bool(np.array_equal(res.values, ref.values))})
    return rows


def bench_scaling_waiting_game(benchmark):
    n = 16
    # 2 * 32 blocks of 16 samples; 1 call per 2 samples (60 evaluations)
    K = 2 * BLOCK_SAMPLES * (16 if not TINY else 2)
    rows = _scaling_case(f"wait {WAIT_S * 1e3:.0f} ms / call, n={n}", Waiting(n), n, K, 2 * 2 * (n - 1))
    ROWS["scaling"] += rows
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(group="parallel scaling", rows=rows)


def bench_scaling_model_game(benchmark):
    pytest.importorskip("sklearn")
    from shapcam.examples.data_valuation import ValidationAccuracy, make_problem

    n = 40 if not TINY else 12
    Xtr, ytr, Xv, yv, _ = make_problem(n_train=n, n_val=150)
    K = 2 * BLOCK_SAMPLES * (4 if not TINY else 1)
    rows = _scaling_case(f"logistic regression / coalition, n={n}",
                         ValidationAccuracy(Xtr, ytr, Xv, yv), n, K, 4 * (n - 1))
    ROWS["scaling"] += rows
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(group="parallel scaling", rows=rows)


CHILD = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import shapcam
    from shapcam._memory import peak_growth
    n, bs, K = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    w = np.linspace(-1, 1, 64)

    def f(masks):
        return masks[:, :64].view(np.uint8).astype(np.float64) @ w + masks[:, -1] * masks[:, -2]

    f(np.zeros((2, n), bool))
    t = time.perf_counter()
    res, growth = peak_growth(lambda: shapcam.estimate_shapley(f, n, K=K, seed=0, batch_size=bs,
                                                               sampler="stratified"))
    dt = time.perf_counter() - t
    print(json.dumps({"s": dt, "evals_per_s": res.n_evals / dt, "n_evals": res.n_evals,
                      "growth_mb": growth}))
""")


@pytest.mark.parametrize("n", [10_000, 100_000] if not TINY else [2_000])
def bench_many_players(benchmark, n):
    bs = 256
    K = 2
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(bs), str(K)],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # the floor of a mask game: every evaluation's mask is n bytes, written once by the engine
    r.update(n=n, batch=bs, mask_bytes_per_s=r["evals_per_s"] * n,
             state_mb=4 * 8 * n / 2**20, batch_mb=bs * n / 2**20)
    ROWS["players"].append(r)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(group="many players", row=r)


def bench_blocked_sum_cost(benchmark):
    rng = np.random.default_rng(0)
    rows = []
    for n, S in ([(16, 4096), (64, 1024), (1024, 64)] if not TINY else [(16, 64)]):
        per = 2 * (n - 1)
        vals = rng.normal(size=(S * per, 1))
        ve, vf = np.zeros(1), np.ones(1)

        def run(block):
            mean, m2 = np.zeros((n, 1)), np.zeros((n, 1))
            base = (np.zeros((n, 1)), np.zeros((n, 1)))
            t = time.perf_counter()
            ops.accumulate(0, 0, S, n, True, vals, ve, vf, 0, mean, m2, block=block, base=base)
            return time.perf_counter() - t

        flat = min(run(0) for _ in range(5))
        blocked = min(run(BLOCK_SAMPLES) for _ in range(5))
        rows.append({"n": n, "samples": S, "one_state_ms": flat * 1e3,
                     "blocked_ms": blocked * 1e3, "blocked/one_state": blocked / flat})
    ROWS["blocked"] += rows
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(group="blocked sum", rows=rows)


def bench_zz_parallel_table(benchmark):
    """Prints the tables of the rows above."""
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    lines = ["| game | engine | workers | seconds | speedup | efficiency | identical bits |",
             "|---|---|---|---|---|---|---|"]
    for r in ROWS["scaling"]:
        lines.append(f"| {r['game']} | {r['engine']} | {r['workers']} | {r['s']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['efficiency']:.0%} | {r['identical']} |")
    lines += ["", "| players n | batch | evaluations / s | mask GB/s | peak growth MB | "
              "state MB (4 [n] float64) | batch of masks MB |", "|---|---|---|---|---|---|---|"]
    for r in ROWS["players"]:
        lines.append(f"| {r['n']} | {r['batch']} | {r['evals_per_s']:.0f} | "
                     f"{r['mask_bytes_per_s'] / 1e9:.2f} | {r['growth_mb'] if r['growth_mb'] is not None else float('nan'):.1f} | "
                     f"{r['state_mb']:.1f} | {r['batch_mb']:.1f} |")
    lines += ["", "| n | samples | one state ms | blocks of 16 ms | ratio |", "|---|---|---|---|---|"]
    for r in ROWS["blocked"]:
        lines.append(f"| {r['n']} | {r['samples']} | {r['one_state_ms']:.2f} | "
                     f"{r['blocked_ms']:.2f} | {r['blocked/one_state']:.3f} |")
    print("\n" + "\n".join(lines))
    benchmark.extra_info.update(group="parallel table", table=lines)
