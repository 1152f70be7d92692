"""Games with 10^5 players: memory O(n·m + batch), no [K, n] or [n, n] arrays anywhere."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import requires_native

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import shapcam
    from shapcam._memory import peak_growth
    n, bs = int(sys.argv[1]), int(sys.argv[2])
    w = np.arange(n, dtype=np.float64) % 7

    def f(masks):  # additive in a few players, cheap to read: the engine's memory is what shows
        sub = masks[:, :64].view(np.uint8).astype(np.float64)
        return sub @ w[:64] + 2.0 * masks[:, -1] * masks[:, -2]

    f(np.zeros((2, n), bool))  # numpy's own first-use allocations, before the baseline
    res, growth = peak_growth(lambda: shapcam.estimate_shapley(f, n, K=1, seed=0, antithetic=False,
                                                               batch_size=bs))
    print(json.dumps({"growth_mb": growth, "n_evals": res.n_evals,
                      "gap": float(res.efficiency_gap),
                      "additive_err": float(np.abs(res.values[:64] - w[:64]).max())}))
""")


@requires_native
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc peak-RSS reset")
def test_hundred_thousand_players_in_bounded_memory():
    n, bs = 100_000, 256
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(bs)], capture_output=True,
                         text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["n_evals"] == 2 + (n - 1)
    assert abs(r["gap"]) < 1e-6 and r["additive_err"] < 1e-9
    # What the run must hold: a batch of masks (bs * n bytes = 25.6 MB), the Welford states and
    # the block base (4 [n, 1] float64 = 3.2 MB), one sample's values (0.8 MB) and ranks (0.4 MB),
    # plus the value function's own [bs, 64] copy. Masks for all n evaluations of a permutation (an
    # [n, n] array: 10 GB) would not fit under the bound; O(n * m + batch) does, with slack.
    bound_mb = (bs * n + 4 * 8 * n + 12 * n) / 2**20 + 40
    assert r["growth_mb"] < bound_mb, r
