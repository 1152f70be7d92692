"""Estimator throughput on the cheap game (engine overhead dominates: v(S) = sum of weights),
two builds side by side, interleaved in separate processes (this VM's run-to-run noise is ±20%).

    git worktree add /tmp/old <commit> && (cd /tmp/old && python setup.py -q build_ext --inplace)
    python benchmarks/throughput_vs_build.py /tmp/old . [--repeats 6]

Prints evaluations/s (median of 7 timed runs of K=1024, n=30, native engine) per build and sampler
("regression" spends K * (n - 1) evaluations too).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CODE = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
# An editable install's import hook would take shapcam from its own tree whatever sys.path says.
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                 and "__editable__" not in getattr(type(f), "__module__", "")]
import shapcam
assert shapcam.__file__.startswith(sys.argv[1]), shapcam.__file__
n = 30
w = np.linspace(-1, 1, n)
f = lambda m: m @ w
kw = json.loads(sys.argv[2])
import inspect
if "sampler" not in inspect.signature(shapcam.estimate_shapley).parameters:
    kw = {"antithetic": kw["sampler"] != "plain"}  # a build from before sampler=
shapcam.estimate_shapley(f, n, 64, engine="native", **kw)
ts = []
for _ in range(7):
    t = time.perf_counter()
    r = shapcam.estimate_shapley(f, n, 1024, engine="native", **kw)
    ts.append(time.perf_counter() - t)
print(json.dumps(r.n_evals / sorted(ts)[3]))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--repeats", type=int, default=6)
    a = ap.parse_args()
    cfgs = [("old", a.old, "antithetic"), ("old", a.old, "plain"),
            ("new", a.new, "antithetic"), ("new", a.new, "plain"), ("new", a.new, "stratified"),
            ("new", a.new, "regression")]
    rows = {}
    for _ in range(a.repeats):
        for build, path, sampler in cfgs:
            kw = {"sampler": sampler, "antithetic": sampler != "plain"}
            out = subprocess.run([sys.executable, "-c", CODE, os.path.abspath(path), json.dumps(kw)],
                                 capture_output=True, text=True, cwd="/")
            if out.returncode:
                sys.exit(out.stderr)
            rows.setdefault((build, sampler), []).append(json.loads(out.stdout.split()[-1]))
    for (build, sampler), v in rows.items():
        print(f"{build:4s} {sampler:11s} {statistics.median(v) / 1e6:6.2f} M evals/s "
              f"(runs: {', '.join(f'{x / 1e6:.2f}' for x in v)})")


if __name__ == "__main__":
    main()
