"""Property tests at the native binding boundary (shapcam._C): random shapes, strides, dtypes,
player ids, aliasing and sizes near the int32/int64 limits. Every call either matches the NumPy
reference bit for bit or raises a Python exception — never crashes, never accepts input the
reference calls invalid. Each example runs in a fresh interpreter, so a crash fails the example
instead of killing pytest."""
import json
import subprocess
import sys
import tempfile

import pytest

from shapcam import _engine

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
pytestmark = pytest.mark.skipif(_engine.native() is None, reason="needs shapcam._C")

RUNNER = r'''
import json, sys
import numpy as np
from shapcam import _C, reference

spec = json.loads(sys.argv[1])
op = spec["op"]

def arr(shape, dtype, fill=None):
    a = np.zeros(shape, dtype=dtype) if fill is None else np.asarray(fill, dtype=dtype).reshape(shape)
    return a

def maybe_strided(a, strided):
    if strided and a.ndim >= 1 and a.shape[-1] >= 2:
        big = np.zeros(a.shape[:-1] + (a.shape[-1] * 2,), dtype=a.dtype)
        v = big[..., ::2]
        v[...] = a
        return v
    return a

def reference_result():
    """What the reference computes for this spec, or raises for input it calls invalid."""
    s = spec
    if op == "masked_apply":
        n, outer, inner = s["n"], s["outer"], s["inner"]
        if n < 2 or n >= 2**31 or outer < 1 or inner < 1 or s["e0"] < 0 or s["e1"] < s["e0"]:
            raise ValueError("invalid")
        ids = np.asarray(s["ids"])
        if ids.size != inner or ids.min() < 0 or ids.max() >= n:
            raise ValueError("invalid ids")
        if s["x_dtype"] not in ("float32", "float64") or s["claim_numel"] != outer * inner:
            raise ValueError("invalid x")
        if s["baseline"] == "none":
            raise ValueError("invalid baseline")
        x = np.asarray(s["x"], dtype=s["x_dtype"]).reshape(outer, inner)
        base = np.asarray(s["base_arr"], dtype=s["x_dtype"]).reshape(outer, inner) if s["baseline"] == "array" else s["base_scalar"]
        return reference.masked_apply(s["seed"], s["e0"], s["e1"], n, s["anti"], x, ids, base)
    if op == "permutations":
        if s["n"] < 1 or s["n"] >= 2**31 or s["k0"] < 0 or s["k1"] < s["k0"]:
            raise ValueError("invalid")
        p = reference.permutations(s["seed"], s["k0"], s["k1"], s["n"], s["anti"])
        return p if s["want"] == "perm" else reference.ranks_of(p)
    if op == "accumulate":
        n, m, S = s["n"], s["m"], s["n_samples"]
        pps = 2 if s["anti"] else 1
        if n < 2 or m < 1 or S < 0 or s["k0"] % pps or s["count0"] < 0 or s["k0"] < 0:
            raise ValueError("invalid")
        if s["rows"] != S * pps * (n - 1):
            raise ValueError("invalid size")
        mean = np.asarray(s["mean0"]).reshape(n, m).copy(); m2 = np.zeros((n, m))
        vals = np.asarray(s["values"]).reshape(s["rows"], m)
        reference.accumulate(s["seed"], s["k0"], S, n, s["anti"], vals, np.asarray(s["ve"]), np.asarray(s["vf"]),
                             s["count0"], mean, m2)
        return np.concatenate([mean.ravel(), m2.ravel()])
    raise AssertionError(op)

def native_result():
    s = spec
    if op == "masked_apply":
        outer, inner = s["outer"], s["inner"]
        real = max(len(s["x"]), 0)
        x = np.asarray(s["x"], dtype=s["x_dtype"])
        x = maybe_strided(x, s["strided"])
        ids = np.asarray(s["ids"], dtype=np.int32)
        B = max(s["e1"] - s["e0"], 0)
        out_len = B * real + s["out_delta"] if B * real + s["out_delta"] >= 0 and B * real < 10**6 else 0
        out = np.zeros(out_len, dtype=s["x_dtype"] if s["x_dtype"] in ("float32", "float64") else "float32")
        if s["alias"] == "out_is_x" and out.size and out.size >= x.size:
            x = out[:x.size]
        if s["baseline"] == "array":
            base = np.asarray(s["base_arr"], dtype=x.dtype)
            if s["alias"] == "out_is_base" and out.size >= base.size and base.size:
                base = out[:base.size]
        elif s["baseline"] == "none":
            base = None
        else:
            base = s["base_scalar"]
        _C.masked_apply_cpu(s["seed"], s["e0"], s["e1"], s["n"], s["anti"], x, outer, inner, ids, base, out)
        if s["alias"] != "none" or s["out_delta"] != 0 or s["strided"]:
            return "accepted"
        return out.reshape(B, outer, inner) if B else out
    if op == "permutations":
        K = max(s["k1"] - s["k0"], 0)
        size = K * max(s["n"], 0) + s["out_delta"]
        buf = np.zeros(max(size, 0) if size < 10**6 else 0, dtype=s["dtype"])
        buf = maybe_strided(buf, s["strided"])
        other = buf if s["alias"] else None
        perm, rank = (buf, other) if s["want"] == "perm" else (other, buf)
        _C.permutations_cpu(s["seed"], s["k0"], s["k1"], s["n"], s["anti"], perm, rank)
        if s["alias"] or s["out_delta"] or s["strided"] or s["dtype"] != "int32":
            return "accepted"
        return buf.reshape(K, s["n"]) if K else buf
    if op == "accumulate":
        n, m = s["n"], s["m"]
        cells = n * m if 0 <= n * m < 10**6 else 0
        mean = np.asarray(s["mean0"][:cells] + [0.0] * (cells - len(s["mean0"][:cells])), dtype=np.float64)
        m2 = np.zeros(cells)
        vals = np.asarray(s["values"], dtype=np.float64)
        if s["alias"] == "mean_is_m2":
            m2 = mean
        elif s["alias"] == "mean_in_values" and vals.size >= cells:
            mean = vals[:cells]
        _C.accumulate_cpu(s["seed"], s["k0"], s["n_samples"], n, m, s["anti"], vals,
                          np.asarray(s["ve"], dtype=np.float64), np.asarray(s["vf"], dtype=np.float64),
                          s["count0"], mean, m2)
        if s["alias"] != "none":
            return "accepted"
        return np.concatenate([mean, m2])

try:
    got = native_result()
except (ValueError, TypeError, MemoryError, OverflowError, RuntimeError) as e:
    print("error", type(e).__name__, str(e)[:200]); sys.exit(0)
if isinstance(got, str):
    print("accepted-invalid"); sys.exit(0)
try:
    want = reference_result()
except Exception as e:
    print("accepted-invalid", type(e).__name__, str(e)[:200]); sys.exit(0)
print("match" if np.array_equal(np.asarray(got).ravel(), np.asarray(want).ravel()) else "mismatch")
'''

sizes = st.sampled_from([-1, 0, 1, 2, 3, 5, 9, 2**31 - 1, 2**31, 2**40, 2**62, 2**63 - 1])
small = st.integers(0, 6)


@st.composite
def masked_apply_spec(draw):
    valid = draw(st.booleans())  # half the examples are valid calls, which must match the reference
    if valid:
        n, outer, inner = draw(st.integers(2, 12)), draw(st.integers(1, 3)), draw(st.integers(1, 6))
        e0 = draw(st.one_of(st.integers(0, 40), st.sampled_from([2**40, 2**62 - 5])))
        e1 = e0 + draw(st.integers(0, 5))
    else:
        n = draw(st.one_of(st.integers(-1, 12), sizes))
        outer = draw(st.one_of(st.integers(0, 3), sizes))
        inner = draw(st.one_of(st.integers(0, 6), sizes))
        e0 = draw(st.one_of(st.integers(0, 20), sizes))
        e1 = e0 + draw(st.one_of(st.integers(-1, 5), st.sampled_from([2**31, 2**62])))
    real_outer, real_inner = min(max(outer, 0), 3), min(max(inner, 0), 6)
    hi = max(min(n, 12), 1)
    ids = draw(st.lists(st.integers(-2, hi + 1), min_size=real_inner, max_size=real_inner))
    if valid or draw(st.booleans()):
        ids = [i % hi for i in ids]
    wild = not valid
    return {"op": "masked_apply", "seed": draw(st.integers(0, 2**64 - 1)), "anti": draw(st.booleans()),
            "n": n, "outer": outer, "inner": inner, "e0": e0, "e1": e1, "ids": ids,
            "x": [float(v) for v in range(1, real_outer * real_inner + 1)],
            "claim_numel": real_outer * real_inner,
            "x_dtype": draw(st.sampled_from(["float32", "float64"] + (["int32"] if wild else []))),
            "baseline": draw(st.sampled_from(["scalar", "array"] + (["none"] if wild else []))),
            "base_scalar": draw(st.floats(-3, 3)),
            "base_arr": [-float(v) for v in range(real_outer * real_inner)],
            "out_delta": draw(st.sampled_from([0, -1, 1])) if wild else 0,
            "alias": draw(st.sampled_from(["none", "out_is_x", "out_is_base"])) if wild else "none",
            "strided": wild and draw(st.booleans())}


@st.composite
def permutations_spec(draw):
    wild = draw(st.booleans())
    k0 = draw(st.one_of(small, sizes) if wild else st.one_of(small, st.sampled_from([2**40, 2**63 - 9])))
    return {"op": "permutations", "seed": draw(st.integers(0, 2**64 - 1)), "anti": draw(st.booleans()),
            "k0": k0, "k1": k0 + draw(st.one_of(st.integers(-1, 4), sizes) if wild else st.integers(0, 4)),
            "n": draw(st.one_of(st.integers(-1, 9), sizes) if wild else st.integers(1, 9)),
            "want": draw(st.sampled_from(["perm", "rank"])),
            "dtype": draw(st.sampled_from(["int32", "int64"])) if wild else "int32",
            "out_delta": draw(st.sampled_from([0, 1, -1])) if wild else 0,
            "alias": wild and draw(st.booleans()), "strided": wild and draw(st.booleans())}


@st.composite
def accumulate_spec(draw):
    wild = draw(st.booleans())
    n = draw(st.one_of(st.integers(-1, 6), sizes) if wild else st.integers(2, 6))
    m = draw(st.one_of(st.integers(0, 3), sizes) if wild else st.integers(1, 3))
    anti = draw(st.booleans())
    S = draw(st.one_of(st.integers(0, 3), sizes) if wild else st.integers(0, 3))
    pps = 2 if anti else 1
    rows = S * pps * (n - 1) if 0 <= S <= 3 and 2 <= n <= 6 else draw(st.integers(0, 8))
    rows += draw(st.sampled_from([0, 0, 1])) if wild else 0
    mm = min(max(m, 0), 3)
    k0 = draw(st.sampled_from([0, 2, 3, -2, 2**62] if wild else [0, 2, 2**40]))
    return {"op": "accumulate", "seed": draw(st.integers(0, 2**64 - 1)), "anti": anti, "n": n, "m": m,
            "n_samples": S, "k0": k0 if (wild or anti) else k0 + 1,
            "count0": draw(st.sampled_from([0, 1, 5, -1] if wild else [0, 1, 5])),
            "rows": rows, "values": [float((i * 7) % 11) for i in range(rows * mm)],
            "ve": [0.5] * mm, "vf": [2.0] * mm, "mean0": [0.25] * (min(max(n, 0), 6) * mm),
            "alias": draw(st.sampled_from(["none", "mean_is_m2", "mean_in_values"])) if wild else "none"}


def run(spec):
    out = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(spec)], capture_output=True,
                         text=True, cwd=tempfile.gettempdir(), timeout=120)
    assert out.returncode == 0, f"crashed (rc {out.returncode}) on {spec}\n{out.stderr[-2000:]}"
    verdict = out.stdout.split()[0]
    assert verdict in ("match", "error"), f"{out.stdout.strip()} on {spec}"
    return verdict


SETTINGS = dict(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=list(hypothesis.HealthCheck))


@hypothesis.settings(**SETTINGS)
@hypothesis.given(masked_apply_spec())
def test_masked_apply_cpu_boundary(spec):
    run(spec)


@hypothesis.settings(**SETTINGS)
@hypothesis.given(permutations_spec())
def test_permutations_cpu_boundary(spec):
    run(spec)


@hypothesis.settings(**SETTINGS)
@hypothesis.given(accumulate_spec())
def test_accumulate_cpu_boundary(spec):
    run(spec)


def test_the_runner_can_tell_a_match_from_an_error():
    """The property tests are only as good as the runner: a valid call matches, an invalid one
    errors (so 'match' and 'error' are both reachable)."""
    ok = {"op": "permutations", "seed": 3, "anti": True, "k0": 0, "k1": 3, "n": 5, "want": "rank",
          "dtype": "int32", "out_delta": 0, "alias": False, "strided": False}
    assert run(ok) == "match"
    assert run(dict(ok, n=2**31)) == "error"
    assert run(dict(ok, alias=True)) == "error"
