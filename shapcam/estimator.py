"""Monte-Carlo permutation sampling of Shapley values, with standard errors (the paper's Eq. 5-6;
Castro, Gómez & Tejada 2009)."""
from __future__ import annotations

import bisect
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import ops, reference
from . import regression as rg
from ._arrays import check_finite_host, host_numpy, is_cuda_array, is_real_number, is_torch, values_2d
from ._progress import progress_bar
from .games import Game, as_game


@dataclass(eq=False)
class ShapleyResult:
    """Shapley estimates and what they rest on.

    values: [n] (or [n, m] for m outputs) — the mean marginal contribution of each player.
    stderr: same shape — standard error of each value over the independent samples (a sample is
        one group of the sampler: a permutation, an antithetic pair, a stratified block of 4);
        NaN when fewer than 2 samples were drawn.
    n_evals: value evaluations spent (2 endpoints + n_permutations * (n - 1)).
    n_permutations, n_samples: permutations drawn, and independent samples they form.
    v_full, v_empty: v(all players) and v(no player), scalars or [m].
    stop_reason: why sampling stopped — "K", "tol", "max_evals", "max_seconds", "memory" (a
        regression run bounded by tol / max_seconds alone reached what it may keep:
        shapcam.regression.MAX_KEPT_BYTES) or "exact" (no sampling error: exact_shapley, one
        player, or a budget that covered every coalition).
    state: the running (mean, M2, count) that ``estimate_shapley(..., resume=result)`` continues.
    sampler: the sampling design ("plain", "antithetic", "stratified", "regression"; see
        SAMPLERS, COALITION_SAMPLERS), or "exact" for exact_shapley.
    dof (property): the degrees of freedom of ``interval``'s t quantile: n_samples - 1; fewer for
        the regression sampler where its pair estimates are heavy-tailed
        (shapcam.regression.interval_dof).
    Arrays are NumPy, or torch tensors on the game's device when it has one.
    ``np.asarray(result)`` is ``result.values`` as a NumPy array (exact_shapley returns this type
    too, with stderr 0).
    """

    values: object
    stderr: object
    n_evals: int
    n_permutations: int
    n_samples: int
    v_full: object
    v_empty: object
    seed: int = 0
    antithetic: bool = True
    engine: str = "reference"
    stop_reason: str = "K"
    state: dict | None = field(default=None, repr=False)  # the Welford state, for resume=
    sampler: str = "antithetic"
    # explain_rows: values and stderr [rows, players(, m)], v_full and v_empty [rows(, m)]
    stacked: bool = False
    # interval's degrees of freedom: None (n_samples - 1), an int, or the regression sampler's
    # shapcam.regression.PendingDof, turned into an int when first asked (or pickled)
    _dof: object = field(default=None, repr=False, compare=False)

    def __getstate__(self):
        self.dof  # a pending one is worked out: it holds the run's design, not a picklable value
        return dict(self.__dict__)

    @property
    def dof(self):
        """Degrees of freedom of ``interval``'s t quantile (None with fewer than 2 samples):
        n_samples - 1, or fewer for the regression sampler where its pair estimates are
        heavy-tailed (shapcam.regression.interval_dof)."""
        d = self._dof
        if callable(d):
            d = d()
            self._dof = d
        if d is None:
            return self.n_samples - 1 if self.n_samples >= 2 else None
        return d

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(result)``: the values as a NumPy array. NumPy's ``copy`` contract: a
        copy unless copy=False is asked (a write to ``np.array(result)`` never reaches the
        result); copy=False raises where a copy cannot be avoided (values on a GPU)."""
        if copy is False:
            if is_cuda_array(self.values):
                raise ValueError("np.asarray(result, copy=False): the values are on a GPU; a "
                                 "copy to the host cannot be avoided")
            return np.asarray(host_numpy(self.values), dtype=dtype)
        return np.array(host_numpy(self.values), dtype=dtype, copy=True)

    def __eq__(self, other):
        """Same type and the same numbers in every public field (arrays compared whole, NaN equal
        to NaN): ``a == b`` is a bool, as for any value."""
        if not isinstance(other, ShapleyResult):
            return NotImplemented
        for name in ("n_evals", "n_permutations", "n_samples", "seed", "antithetic", "engine",
                     "stop_reason", "sampler"):
            if getattr(self, name) != getattr(other, name):
                return False
        return all(_same_numbers(getattr(self, k), getattr(other, k))
                   for k in ("values", "stderr", "v_full", "v_empty"))

    __hash__ = None  # mutable, compared by value

    def interval(self, level: float = 0.95):
        """(low, high): values -+ q * stderr with q the Student-t quantile on ``dof`` degrees of
        freedom (n_samples - 1; fewer for the regression sampler's heavy-tailed pairs). The
        samples are independent groups, so their mean is t-distributed when the marginals are
        near normal; with few samples this is much wider than 1.96 SE, which covers only ~70% at
        2 samples. NaN with fewer than 2 samples."""
        if not (is_real_number(level) and 0 < level < 1):
            raise ValueError(f"level: expected a probability in (0, 1), got {level!r}")
        if self.stop_reason == "exact":  # no sampling error: the interval is the value itself
            return self.values - 0 * self.stderr, self.values + 0 * self.stderr
        q = t_quantile(0.5 + level / 2, self.dof) if self.n_samples >= 2 else float("nan")
        return self.values - q * self.stderr, self.values + q * self.stderr

    def to_shap(self, feature_names=None, data=None):
        """This result as a ``shap.Explanation`` (shap must be installed), for shap's plots:
        values [n] (or [n, m]: one column per output), base_values v(none), error_std the
        standard errors, data the explained row's values, feature_names the players' names
        (default: a TabularGame's names when the result came from one and none are given; else
        shap's own). Host NumPy arrays, copies."""
        try:
            import shap
        except ImportError:
            raise ImportError("to_shap needs shap: pip install shap") from None
        values = np.array(host_numpy(self.values), dtype=np.float64)
        n = values.shape[1 if self.stacked else 0]
        names = feature_names if feature_names is not None else self._feature_names
        if names is not None and len(names) != n:
            raise ValueError(f"feature_names: expected {n} names, got {len(names)}")
        if data is None and self.stacked:
            data = getattr(self, "_data", None)
            if data is not None and data.shape[1:] != (n,):
                data = None  # the rows' columns are grouped into fewer players
        if data is not None:
            data = np.asarray(host_numpy(data) if is_torch(data) else data)
            want = values.shape[:2] if self.stacked else (n,)
            if data.shape[:len(want)] != want:
                raise ValueError(f"data: expected shape {want} (the players' values), got "
                                 f"{data.shape}")
        base = np.array(host_numpy(self.v_empty), dtype=np.float64)
        return shap.Explanation(values=values, base_values=base if base.ndim else float(base),
                                data=data, feature_names=None if names is None else list(names),
                                error_std=np.array(host_numpy(self.stderr), dtype=np.float64))

    def to_shapiq(self, output=None):
        """This result as a ``shapiq.InteractionValues`` of order 1 (index "SV"; shapiq must be
        installed): the empty coalition's entry is v(none), player i's is its value; ``estimated``
        is False for exact results. With several outputs, ``output`` picks one (an index)."""
        try:
            from shapiq import InteractionValues
        except ImportError:
            raise ImportError("to_shapiq needs shapiq: pip install shapiq") from None
        values = np.array(host_numpy(self.values), dtype=np.float64)
        base = np.array(host_numpy(self.v_empty), dtype=np.float64).reshape(-1)
        if values.ndim == 2:
            m = values.shape[1]
            if not (isinstance(output, (int, np.integer)) and not isinstance(output, bool)
                    and -m <= output < m):
                raise ValueError(f"output: the result has {m} outputs; pick one with output=0.."
                                 f"{m - 1} (InteractionValues holds one)")
            values, base = values[:, output], base[[output]]
        elif output not in (None, 0):
            raise ValueError(f"output: the result has one output, got output={output!r}")
        n = values.shape[0]
        lookup = {(): 0, **{(i,): i + 1 for i in range(n)}}
        return InteractionValues(np.concatenate([base[:1], values]), index="SV", max_order=1,
                                 min_order=0, n_players=n, interaction_lookup=lookup,
                                 estimated=self.stop_reason != "exact",
                                 estimation_budget=int(self.n_evals), baseline_value=float(base[0]))

    @property
    def _feature_names(self):
        return getattr(self, "_names", None)

    @property
    def efficiency_gap(self):
        """sum(values) - (v_full - v_empty): zero up to float rounding for every estimate (per
        row for explain_rows' stacked results)."""
        return self.values.sum(1 if self.stacked else 0) - (self.v_full - self.v_empty)


def _same_numbers(a, b) -> bool:
    """a and b hold the same numbers in the same shape (NaN equals NaN), on the host or a device."""
    if is_torch(a) or is_torch(b):
        if not (is_torch(a) and is_torch(b)) or a.device != b.device or a.shape != b.shape:
            return False
        import torch

        return bool(torch.equal(a, b) or (torch.isnan(a) & torch.isnan(b) | (a == b)).all())
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df (Abramowitz & Stegun 26.7.3-4)."""
    import math

    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        if df == 1:
            return 2 * theta / math.pi
        term, acc = 1.0, 1.0
        for k in range(1, (df - 1) // 2):  # 1 + 2/3 c^2 + 2.4/3.5 c^4 + ...
            term *= c2 * (2 * k) / (2 * k + 1)
            acc += term
        return 2 / math.pi * (theta + s * math.cos(theta) * acc)
    term, acc = 1.0, 1.0
    for k in range(1, df // 2):  # 1 + 1/2 c^2 + 1.3/2.4 c^4 + ...
        term *= c2 * (2 * k - 1) / (2 * k)
        acc += term
    return s * acc


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with df >= 1 degrees of freedom: bisection on the
    closed-form CDF for df <= 2000, the Cornish-Fisher expansion around the normal beyond."""
    import math

    if df > 2000:
        lo, hi = 0.0, 10.0
        for _ in range(100):  # the normal quantile, by bisection on erf
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p else (lo, mid)
        z = (lo + hi) / 2
        return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
    target = 2 * p - 1
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < target else (lo, mid)
        if hi - lo <= 1e-13 * hi:
            break
    return (lo + hi) / 2


# Anytime stopping: the rule is checked only at these sample counts (a geometric schedule from
# min_samples), never at chunk boundaries, so where a run stops does not depend on batch_size.
CHECK_GROWTH = 1.25
DEFAULT_MIN_SAMPLES = 16

# Sampling designs: name -> permutations per sample (csrc/include/shapcam/permutation.h). Every
# permutation of a group is uniformly distributed on its own, so each design is unbiased; groups
# are independent, so the standard error is taken over groups; the values of every sample sum to
# v(all) - v(none), so efficiency is exact.
SAMPLERS = {
    # Textbook permutation sampling (Castro, Gómez & Tejada 2009).
    "plain": reference.PLAIN,
    # Each permutation with its reverse: a player's predecessors in the two are complementary
    # (Mitchell, Cooper, Frank & Holmes 2022 call it the structured block of 2); exact on
    # games of order 2 and below.
    "antithetic": reference.ANTITHETIC,
    # Blocks of 4: pi, its reverse, pi rotated by n // 2, and that one's reverse. A player takes
    # four positions spread evenly over the permutation (position stratification, Castro et al.
    # 2017; a structured block of 4 in Mitchell et al. 2022), on top of the antithetic pairs.
    "stratified": reference.STRATIFIED,
}
# Samplers of coalitions that are not permutation prefixes (shapcam/regression.py): they need a
# game that values any coalition (Game.evaluate_masks).
#   "regression": paired coalitions, sizes by ~1/sqrt(s(n-s)), the border strata enumerated,
#   residuals of a cross-fitted surrogate, additive plus a function of |S| (Witter, Liu & Musco
#   2025). Unbiased; the standard error is over the pairs.
COALITION_SAMPLERS = ("regression",)
# The default for an unknown game: the lowest median error over the benchmark suite
# (benchmarks/RESULTS.md) where it applies; the best permutation design otherwise.
DEFAULT_SAMPLER = "regression"
PERMUTATION_DEFAULT = "stratified"


def resolve_sampler(sampler, antithetic=True) -> tuple[str, int]:
    """(name, permutations per sample) of a sampler choice; antithetic=False means "plain".
    None resolves to the best permutation design here (estimate_shapley resolves None to
    DEFAULT_SAMPLER where it applies: see regression_applies); "regression" has 0 permutations
    per sample."""
    if sampler is None:
        sampler = PERMUTATION_DEFAULT if antithetic else "plain"
    names = sorted(SAMPLERS) + list(COALITION_SAMPLERS)
    if not isinstance(sampler, str) or sampler not in names:
        raise ValueError(f"sampler: expected one of {names} or None, got {sampler!r}")
    if not antithetic and sampler != "plain":
        raise ValueError(f"antithetic=False asks for plain permutation sampling, but sampler="
                         f"{sampler!r} was given (leave antithetic at True, or pass sampler='plain')")
    return sampler, SAMPLERS.get(sampler, 0)


def regression_applies(game, K, max_evals, executor) -> str | None:
    """Why the regression sampler cannot run this game (None: it can)."""
    n = game.n_players
    if not game.any_coalition:
        return f"{type(game).__name__} values permutation prefixes only (no evaluate_masks)"
    if executor is not None:
        return "it runs in one process (executor= spreads permutation samplers only)"
    if n > rg.MAX_PLAYERS:
        return f"it fits an n x n regression, offered up to {rg.MAX_PLAYERS} players (n = {n})"
    if n >= 2:
        cap = _budget(n, K, max_evals)
        plan = rg.make_plan(n, None if cap is None else cap - 2)
        if cap is not None and plan.exact and cap - 2 < plan.n_enumerated:
            return (f"a budget of {cap} evaluations (K / max_evals) does not hold the {plan.n_enumerated} "
                    f"coalitions besides the endpoints that it enumerates for {n} players")
        if cap is not None and not plan.exact and cap - 2 < plan.n_enumerated + 4:
            return (f"a budget of {cap} evaluations (K / max_evals) does not hold its {plan.n_enumerated} border "
                    f"coalitions and two pairs")
    return None


def _budget(n, K, max_evals):
    """Evaluations a run may spend (endpoints included): K permutations' worth, max_evals; None
    when neither bounds it."""
    cap = None if K is None else 2 + int(K) * (n - 1)
    if max_evals is not None:
        cap = max_evals if cap is None else min(cap, max_evals)
    return cap


def _checkpoints(first, cap):
    """Sample counts at which the stopping rule is checked: first, then x1.25 (at least +1)."""
    c = first
    while c < cap:
        yield c
        c = max(c + 1, int(np.ceil(c * CHECK_GROWTH)))
    yield cap


# The fixed order of the sum. Samples are pushed, in sample order, into the Welford state of their
# block (BLOCK_SAMPLES consecutive samples, from zero); blocks are merged in block order (_merge).
# Who computed a block (this process, another worker, an earlier run resumed) cannot change a bit.
BLOCK_SAMPLES = 16


class _Welford:
    """Running mean and M2 ([n, m] float64: NumPy, or torch on the game's device) over count samples."""

    __slots__ = ("mean", "m2", "count")

    def __init__(self, mean, m2, count=0):
        self.mean, self.m2, self.count = mean, m2, int(count)

    @classmethod
    def zeros(cls, n, m, like=None):
        if like is not None and is_torch(like):
            import torch

            z = torch.zeros((n, m), dtype=torch.float64, device=like.device)
            return cls(z, torch.zeros_like(z))
        return cls(np.zeros((n, m)), np.zeros((n, m)))

    def copy(self):
        c = (lambda a: a.clone()) if is_torch(self.mean) else (lambda a: a.copy())
        return _Welford(c(self.mean), c(self.m2), self.count)


def _merge(a: _Welford, b: _Welford) -> _Welford:
    """The state of a's samples followed by b's (Chan, Golub & LeVeque 1979): on the host or the
    device, the arithmetic of accumulate.h::merge_block (reference.merge_block), which folds blocks
    inside the engines, so a block merged here and one folded there give the same bits. An empty
    side returns the other one unchanged."""
    if b.count == 0:
        return a
    if a.count == 0:
        return b
    out = a.copy()
    reference.merge_block(out.mean, out.m2, a.count, b.mean, b.m2, b.count)
    out.count = a.count + b.count
    return out


class _Sampler:
    """What every evaluation of one run needs: the game and its settings, the endpoints' values.
    Picklable (with the game) so a worker process can run blocks of samples."""

    def __init__(self, game, seed, group, engine, m, v_empty, v_full, batch_size, on_device):
        # group: the sampling design as permutations per sample (1, 2, 4), what the ops and
        # Game.evaluate take as their `antithetic` argument (reference.group_of)
        self.game, self.seed, self.antithetic, self.engine = game, seed, group, engine
        self.m, self.v_empty, self.v_full = m, v_empty, v_full
        self.batch_size, self.on_device = batch_size, on_device
        self.n = game.n_players
        self.pps = group
        self.per_sample = self.pps * (self.n - 1)

    def evaluate(self, e0, e1):
        """Values of evaluations [e0, e1) as float64 [B, max(m, 1)], checked."""
        n = self.n
        try:
            raw = self.game.evaluate(self.seed, e0, e1, self.antithetic, self.engine)
        except Exception as exc:
            if hasattr(exc, "add_note"):
                k0, k1 = e0 // (n - 1), (e1 - 1) // (n - 1)
                exc.add_note(f"shapcam: raised by the value function on evaluations [{e0}, {e1}) "
                             f"(permutations {k0}..{k1}, seed {self.seed})")
            raise
        v, _ = values_2d(raw, e1 - e0, self.m, f"evaluations [{e0}, {e1})")
        if not self.on_device:
            v = host_numpy(v)
            check_finite_host(v, e0, n)
        return v


class _Feed:
    """Evaluations in index order, computed in chunks of at most batch_size evaluations that may
    span blocks but never pass the horizon (the next stopping-rule checkpoint: a run that stops
    there has evaluated nothing beyond it)."""

    def __init__(self, s: _Sampler, e_start: int, bar=None):
        self.s, self.pos, self.bar = s, e_start, bar
        self.chunk, self.off = None, 0

    def rows(self, limit: int, horizon: int):
        """Up to `limit` rows of values, the next ones in index order (a view of the chunk)."""
        if self.chunk is None or self.off == self.chunk.shape[0]:
            e0 = self.pos
            e1 = min(e0 + self.s.batch_size, horizon)
            assert e1 > e0
            self.chunk, self.off = self.s.evaluate(e0, e1), 0
            self.pos = e1
            if self.bar is not None:
                self.bar.update(e1 - e0)
        take = min(limit, self.chunk.shape[0] - self.off)
        out = self.chunk[self.off:self.off + take]
        self.off += take
        return out


class _Run:
    """Pushes samples, in sample order from `first`, into a Welford state.

    With ``base`` (the estimator's own run): the fixed-shape sum — state holds the block in
    progress and the engine folds each finished block of BLOCK_SAMPLES into base (count0 is the
    sample's index, first = 0). Without (a worker's block): one state from zero, which is what
    that block's state is inside the estimator's run, bit for bit.
    """

    def __init__(self, s: _Sampler, first: int, state: _Welford | None = None,
                 base: _Welford | None = None):
        self.s, self.first, self.base = s, first, base
        self.state = state if state is not None else _Welford.zeros(s.n, max(s.m, 1), s.v_empty)
        self._carry = None  # rows of a sample not yet complete: [per_sample, m] buffer
        self._filled = 0

    @property
    def pushed(self):
        return self.state.count + (self.base.count if self.base is not None else 0)

    @property
    def next_sample(self):
        return self.first + self.pushed

    def merged(self) -> _Welford:
        """The state over every sample pushed."""
        return _merge(self.base, self.state) if self.base is not None else self.state

    def advance(self, to: int, feed: _Feed, horizon: int):
        """Push samples [next_sample, to), values from feed (never evaluated past horizon)."""
        ps = self.s.per_sample
        need = (to - self.next_sample) * ps
        while need > 0:
            v = feed.rows(need, horizon * ps)
            self._push(v)
            need -= v.shape[0]
        assert self._filled == 0

    def _push(self, values):
        ps, i, B = self.s.per_sample, 0, values.shape[0]
        if self._filled:
            take = min(B, ps - self._filled)
            self._carry[self._filled:self._filled + take] = values[:take]
            self._filled += take
            i = take
            if self._filled == ps:
                self._accumulate(self._carry, 1)
                self._filled = 0
        whole = (B - i) // ps
        if whole:
            self._accumulate(values[i:i + whole * ps], whole)
            i += whole * ps
        if i < B:
            if self._carry is None:
                self._carry = values.new_empty((ps, values.shape[1])) if is_torch(values) \
                    else np.empty((ps, values.shape[1]))
            self._carry[:B - i] = values[i:]
            self._filled = B - i

    def _accumulate(self, rows, n_samples):
        s, st, base = self.s, self.state, self.base
        count0 = self.pushed
        blocked = dict(block=BLOCK_SAMPLES, base=(base.mean, base.m2)) if base is not None else {}
        ops.accumulate(s.seed, (self.first + count0) * s.pps, n_samples, s.n, s.antithetic,
                       rows.contiguous() if is_torch(rows) else rows, s.v_empty, s.v_full,
                       count0, st.mean, st.m2, engine=s.engine, **blocked)
        total = count0 + n_samples
        if base is not None:
            base.count, st.count = total - total % BLOCK_SAMPLES, total % BLOCK_SAMPLES
        else:
            st.count = total


class _Schedule:
    """Where a run may stop: the sample counts at which the rule is checked (min_samples, then
    x1.25, never chunk boundaries: where a run stops does not depend on batch_size) and the cap.
    Cuts of block j: those checkpoints inside it, and its end."""

    def __init__(self, first, cap, anytime):
        self.cap = cap
        self._gen = _checkpoints(first, cap) if anytime else iter([cap])
        self._points = []  # generated so far, increasing

    def _upto(self, hi):
        while not self._points or self._points[-1] < hi:
            nxt = next(self._gen, None)
            if nxt is None:
                break
            self._points.append(nxt)

    def cuts(self, j, start):
        """[(cut, is_checkpoint)] for block j, after sample `start`, up to the block's end."""
        lo, hi = max(start, j * BLOCK_SAMPLES), min((j + 1) * BLOCK_SAMPLES, self.cap)
        self._upto(hi)
        pts = [c for c in self._points if lo < c <= hi]
        out = [(c, True) for c in pts]
        if not pts or pts[-1] != hi:
            out.append((hi, False))
        return out

    def points(self, start):
        """The checkpoints after sample `start`, in order (the cap last)."""
        i = 0
        while True:
            if i == len(self._points):
                nxt = next(self._gen, None)
                if nxt is None:
                    return
                self._points.append(nxt)
            c = self._points[i]
            i += 1
            if c > start:
                yield c

    def horizon(self, sample):
        """The first checkpoint at or after `sample` (the cap at the latest)."""
        self._upto(sample)
        i = bisect.bisect_left(self._points, sample)
        return self._points[i] if i < len(self._points) else self.cap

    def blocks(self, start):
        """Blocks that hold samples [start, cap)."""
        j = start // BLOCK_SAMPLES
        while j * BLOCK_SAMPLES < self.cap:
            yield j
            j += 1


def _run_serial(s: _Sampler, sched: _Schedule, start: int, base: _Welford, partial, rule, bar):
    """The run in this process: one state, checked at each checkpoint. Returns (final state,
    base, block in progress, reason or None)."""
    run = _Run(s, 0, partial, base=base)
    feed = _Feed(s, start * s.per_sample, bar)
    for target in sched.points(start):
        run.advance(target, feed, target)
        cur = run.merged()
        reason = rule(cur)
        if reason:
            return cur, run.base, run.state, reason
    return run.merged(), run.base, run.state, None


def _fold(total: _Welford, blocks, rule):
    """Merge other workers' blocks in order (each a list of (cut, is_checkpoint, state of the block
    from zero at that cut)); at each checkpoint ask rule(state) for a reason to stop. Returns
    (final, base, block in progress, reason or None) as _run_serial does."""
    base, last = total, None
    for _j, snaps in blocks:
        for _cut, check, st in snaps:
            last = st
            cur = _merge(base, st)
            if check:
                reason = rule(cur)
                if reason:
                    return cur, base, last, reason
        if last is not None and last.count == BLOCK_SAMPLES:
            base, last = cur, None
    return (_merge(base, last) if last is not None else base), base, last, None


def _int_or_none(v, name, lowest):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lowest:
        raise ValueError(f"{name}: expected an int >= {lowest} or None, got {v!r}")
    return int(v)


def _positive_or_none(v, name):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or \
            not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected a positive number or None, got {v!r}")
    return float(v)


def estimate_shapley(value_fn, n_players=None, K=64, *, seed=0, antithetic=True, batch_size=None,
                     device=None, engine=None, progress=None, tol=None, rtol=None, max_evals=None,
                     max_seconds=None, min_samples=None, resume=None,
                     executor=None, sampler=None) -> ShapleyResult:
    """Estimate Shapley values by sampling permutations or coalitions of the players.

    Args:
        value_fn: the game. Either a callable ``value_fn(masks) -> values`` where masks is a
            boolean ``[B, n]`` batch of coalitions (NumPy; a torch tensor on ``device`` when one
            is given) and values is ``[B]`` or ``[B, m]`` (m outputs explained together), or a
            :class:`~shapcam.Game` such as :class:`~shapcam.MaskedInputGame`.
        n_players: number of players n (taken from the game when value_fn is a Game).
        K: permutations to sample (>= 1), or None to sample until a stopping rule below fires.
            Each permutation costs n - 1 evaluations; v(all) and v(none) are evaluated once. K is
            rounded up to whole samples of the sampler (a multiple of 2 for antithetic pairs, of
            4 for stratified blocks); ``n_permutations`` reports the number drawn.
        seed: the permutations are a pure function of (seed, permutation index, n): the same seed
            gives the same estimate whatever batch_size, engine or device. The regression
            sampler keeps what depends only on (seed, n, budget) — its pairs' coalitions and its
            fit's counts — in shapcam.regression.design_cache for later runs with the same ones
            (explaining many inputs with one seed), which changes no bit of a result.
        antithetic: False asks for textbook permutation sampling (``sampler="plain"``); True
            (default) leaves the choice to ``sampler``.
        sampler: the sampling design, each unbiased with exact efficiency and a standard error
            over its independent samples: ``"plain"`` (one permutation per sample),
            ``"antithetic"`` (a permutation and its reverse), ``"stratified"`` (blocks of 4: a
            permutation, its reverse, its rotation by n // 2 and that one's reverse),
            ``"regression"`` (paired coalitions S and its complement, the border sizes 1 and n-1
            — and deeper ones when the budget allows — enumerated exactly, residuals of a
            cross-fitted surrogate, additive plus a function of the size; Witter, Liu & Musco 2025;
            see shapcam.regression).
            None: DEFAULT_SAMPLER ("regression", the lowest error measured over the benchmark
            suite in benchmarks/RESULTS.md) where it applies — a game that values any
            coalition (not TruncatedGame), at most 1000 players, no executor, a budget that
            holds its 2n border coalitions — and "stratified" otherwise; ``result.sampler``
            says which ran. For "regression", K buys K * (n - 1) evaluations (the cost of K
            permutations), a sample is a pair, ``n_permutations`` is 0, the strata enumerated
            are chosen from the budget (K or max_evals; the borders alone when only tol /
            max_seconds bound the run), all of them when 2^n - 2 evaluations fit (then the
            result is exact, stop_reason "exact"), and a resumed run keeps the earlier run's
            strata.
        batch_size: most coalitions per value_fn call (default: the game's, e.g. 16384 masks, or
            256 MB of masked inputs on the CPU / 1 GB on a GPU for MaskedInputGame).
        device: None (NumPy masks) or a torch device for the masks given to value_fn.
        engine: "native", "reference", or None for the best one built.
        progress: show a tqdm bar (None: only for long runs on a terminal).
        tol: stop once the largest standard error is at most tol (absolute, in value units).
        rtol: stop once the largest standard error is at most rtol times the range of the values
            (max - min over players, the largest over outputs).
        max_evals: never spend more evaluations than this in total (endpoints included); the
            run stops at the last whole sample that fits.
        max_seconds: stop at the first check after this much wall time.
        min_samples: samples drawn before tol/rtol may fire (default 16; a standard error from a
            handful of samples is not to be trusted). The rules are checked at sample counts
            min_samples, then x1.25, so where a run stops does not depend on batch_size.
        resume: a ShapleyResult of an earlier run on the same game, seed and sampler:
            sampling continues from its next permutation, and the result is the one a single run
            to the new stopping point gives, bit for bit (K counts all permutations, the earlier
            ones included).
        executor: run blocks of samples on other workers and merge their states: a
            ``concurrent.futures.Executor`` (e.g. a ``ProcessPoolExecutor``), a Dask
            ``distributed.Client``, ``"ray"`` (Ray, initialised if it is not), or an int (a
            ProcessPoolExecutor of that many processes for this run). The game is pickled
            (cloudpickle when installed) and sent once per worker; workers return [n, m] states,
            not evaluations. The result is the serial one bit for bit, whatever the number of
            workers or the order they finish in (see :mod:`shapcam.parallel`); a task lost with
            its worker is recomputed; stopping rules work as without it. Host games only.

    Returns:
        ShapleyResult with values and stderr ``[n]`` (or ``[n, m]``), n_evals, n_permutations,
        n_samples, v_full, v_empty and ``stop_reason``: "K" (K permutations drawn), "tol" (tol
        or rtol met), "max_evals" or "max_seconds". The values always sum to v_full - v_empty
        (efficiency) up to float rounding.
    """
    game = as_game(value_fn, n_players, device)
    n = game.n_players
    if K is not None:
        if isinstance(K, bool) or not isinstance(K, (int, np.integer)):
            raise TypeError(f"K: expected an int number of permutations or None, got {type(K).__name__}")
        if K < 1:
            raise ValueError(f"K: need at least 1 permutation, got {K}")
    tol, rtol = _positive_or_none(tol, "tol"), _positive_or_none(rtol, "rtol")
    max_seconds = _positive_or_none(max_seconds, "max_seconds")
    max_evals = _int_or_none(max_evals, "max_evals", 1)
    if max_evals is not None and max_evals < 2:
        raise ValueError(f"max_evals={max_evals}: every run evaluates v(none) and v(all), 2 "
                         f"evaluations; give max_evals >= 2")
    min_samples = _int_or_none(min_samples, "min_samples", 2) or DEFAULT_MIN_SAMPLES
    if K is None and tol is None and rtol is None and max_evals is None and max_seconds is None:
        raise ValueError("K=None samples until a rule fires: give tol, rtol, max_evals or max_seconds")
    if batch_size is None:
        batch_size = game.default_batch_size()
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    seed = ops.check_seed(seed)
    auto = sampler is None and antithetic is True
    if auto:
        if resume is not None:  # continue with the earlier run's design
            sampler = (getattr(resume, "state", None) or {}).get("sampler", PERMUTATION_DEFAULT)
        elif DEFAULT_SAMPLER in COALITION_SAMPLERS and \
                regression_applies(game, K, max_evals, executor) is not None:
            sampler = PERMUTATION_DEFAULT
        else:
            sampler = DEFAULT_SAMPLER
    sampler, pps = resolve_sampler(sampler, antithetic)
    if sampler in COALITION_SAMPLERS and (not auto or resume is not None):
        # chosen by name, or by the run resumed: a sampler that cannot run here is an error,
        # never a silent switch (nor a silently ignored executor=)
        why = regression_applies(game, K, max_evals, executor)
        if why is not None:
            raise ValueError(f"sampler={sampler!r} cannot run here: {why}; use a permutation "
                             f"sampler ('stratified')")
    t_start = time.perf_counter()

    ends, m = values_2d(game.endpoints(), 2, None, "the empty and full coalitions")
    # Kept for the whole run: a copy, so a value_fn that returns a view of a buffer it reuses
    # cannot change v(none) / v(all) under us.
    ends = ends.clone() if is_torch(ends) else np.array(ends, copy=True)
    # One routing decision for the whole run: device values accumulate on the device with the
    # CUDA kernels; host values (or an explicit host engine) on the host.
    rt = ops.route(engine, is_cuda_array(ends))
    eng, on_device = rt.engine, rt.cuda
    if not on_device:
        check_finite_host(host_numpy(ends), None, n)
    v_empty, v_full = ends[0], ends[1]
    mw = max(m, 1)

    if n == 1:
        pps = max(pps, 1)
        K_eff = -(-int(K) // pps) * pps if K is not None else pps
        values = (v_full - v_empty).reshape(1, mw)
        stderr = values * 0
        # one player: v(all) - v(none) is its Shapley value, exactly
        return _result(values, stderr, m, 2, K_eff, K_eff // pps, v_full, v_empty, seed, pps > 1,
                       eng, game, "exact", None, sampler)

    if sampler in COALITION_SAMPLERS:
        return _run_regression(game, seed, eng, m, v_empty, v_full, K, max_evals, tol, rtol,
                               max_seconds, min_samples, resume, int(batch_size), progress, t_start)
    per_sample = pps * (n - 1)
    if on_device:
        v_empty, v_full = v_empty.contiguous(), v_full.contiguous()
    else:
        v_empty, v_full = host_numpy(v_empty), host_numpy(v_full)
    if executor is not None and on_device:
        raise ValueError("executor=: workers run games whose values live on the host; this game's "
                         "values are on a GPU (run it without executor=, or give each worker a "
                         "host game)")
    design = sampler
    sampler = _Sampler(game, seed, pps, eng, m, v_empty, v_full, int(batch_size), on_device)
    total, partial = _Welford.zeros(n, mw, v_empty), None
    if resume is not None:
        total, partial = _resume_state(resume, seed, design, n, m, v_empty, v_full, on_device)
    start = total.count + (partial.count if partial is not None else 0)
    # Samples K permutations make (ceil(K / pps) groups); None: no K cap.
    k_samples = -(-int(K) // pps) if K is not None else None
    cap = k_samples
    if max_evals is not None:
        by_evals = (max_evals - 2) // per_sample
        if by_evals < max(start, 1):
            raise ValueError(f"max_evals={max_evals}: not even one more sample fits (a sample of "
                             f"sampler={design!r} costs {per_sample} evaluations, plus 2 for the "
                             f"endpoints); give max_evals >= {2 + per_sample * max(start + 1, 1)}"
                             + (", or sampler='plain'" if pps > 1 else ""))
        cap = by_evals if cap is None else min(cap, by_evals)
    anytime = tol is not None or rtol is not None or max_seconds is not None
    bounded = cap is not None
    if not bounded:  # K=None with tol/rtol/max_seconds only: unbounded, checked as it goes
        cap = np.iinfo(np.int64).max // (4 * per_sample)
    if cap < start:
        raise ValueError(f"resume: the earlier run already has {start} samples, more than "
                         f"this call's K / max_evals allow ({cap}); ask for a larger K or max_evals")
    # An absolute schedule (not relative to a resumed run's count), so a resumed run checks where
    # a single run would have.
    sched = _Schedule(min_samples, cap, anytime)

    def rule(st):
        if st.count >= cap:
            return None
        if (tol is not None or rtol is not None) and _se_met(st, tol, rtol):
            return "tol"
        if max_seconds is not None and time.perf_counter() - t_start >= max_seconds:
            return "max_seconds"
        return None

    bar = progress_bar((cap - start) * per_sample if bounded else 0, progress, desc="shapley",
                       unit="eval", auto_min=200_000)
    try:
        if start >= cap:
            final, base, last, reason = _merge(total, partial) if partial else total, total, partial, None
        elif executor is None:
            final, base, last, reason = _run_serial(sampler, sched, start, total, partial, rule, bar)
        else:
            from . import parallel

            blocks = parallel.run_blocks(executor, sampler, sched, start, partial, bar)
            try:
                final, base, last, reason = _fold(total, blocks, rule)
            finally:
                blocks.close()
    finally:
        bar.close()
    stop_reason = reason or ("K" if k_samples is not None and cap == k_samples else "max_evals")
    c = final.count
    stderr = _stderr(final)
    if on_device:
        import torch

        # A non-finite value anywhere reaches some player's marginals, hence the mean.
        if not bool(torch.isfinite(final.mean).all()):
            raise ValueError("value_fn returned a non-finite value (NaN or inf) for some coalition")
    if last is not None and last.count == BLOCK_SAMPLES:
        base, last = final, None
    last = last.copy() if last is not None else _Welford.zeros(n, mw, v_empty)
    base = base.copy()
    state = {"n": n, "m": m, "count": c, "block_samples": BLOCK_SAMPLES, "sampler": design,
             "base": (base.mean, base.m2, base.count), "block": (last.mean, last.m2, last.count)}
    values = final.mean.clone() if on_device else final.mean.copy()
    return _result(values, stderr, m, 2 + c * per_sample, c * pps, c, v_full, v_empty, seed,
                   pps > 1, eng, game, stop_reason, state, design)


def _run_regression(game, seed, eng, m, v_empty, v_full, K, max_evals, tol, rtol, max_seconds,
                    min_samples, resume, batch_size, progress, t_start):
    """estimate_shapley with sampler="regression" (shapcam/regression.py): the enumerated border
    coalitions, then pairs until K / max_evals / a stopping rule, the estimate from scratch at
    each check and at the end (a pure function of the values in evaluation order)."""
    n = game.n_players
    mw = max(m, 1)
    v0 = np.asarray(host_numpy(v_empty), dtype=np.float64).reshape(-1)
    vN = np.asarray(host_numpy(v_full), dtype=np.float64).reshape(-1)
    cap_evals = _budget(n, K, max_evals)
    if resume is not None:
        state = _resumable(resume, seed, "regression", n, m, v0, vN)
        plan = rg.plan_from_state(state["plan"])
        E_vals = np.array(state["enum"], dtype=np.float64).reshape(-1, mw)
        P_vals = np.array(state["pairs"], dtype=np.float64).reshape(-1, mw)
        start = int(state["count"])
    else:
        plan = rg.make_plan(n, None if cap_evals is None else cap_evals - 2)
        E_vals = np.empty((0, mw))
        P_vals = np.empty((0, mw))
        start = 0
    nE = plan.n_enumerated
    if plan.exact:
        cap = 0
    elif cap_evals is None:  # unbounded but for tol / max_seconds: bounded by what it keeps
        cap = rg.pairs_within(n, mw)
    else:
        cap = (cap_evals - 2 - nE) // 2
        if cap < 2:
            raise ValueError(f"max_evals / K: a budget of {cap_evals} evaluations does not hold the "
                             f"regression sampler's {nE} border coalitions and two pairs")
    if cap < start:
        raise ValueError(f"resume: the earlier run already has {start} pairs, more than this call's "
                         f"K / max_evals allow ({cap} pairs: {cap_evals} evaluations); ask for a "
                         f"larger K or max_evals")
    fit = rg.Fit(plan, seed, eng, v0, vN)

    def values_of(masks, where):
        raw = game.evaluate_masks(masks)
        v, _ = values_2d(raw, masks.shape[0], m, where)
        # A copy: the run keeps every pair's values, and a value_fn may return a view of a
        # buffer it writes again on its next call.
        v = np.array(host_numpy(v), dtype=np.float64, copy=True)
        if np.isfinite(v).all():
            return v
        bad = ~np.isfinite(v).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"value_fn returned a non-finite value ({v[i].tolist()}) for the "
                             f"coalition {np.flatnonzero(masks[i]).tolist()[:20]}"
                             f"{'...' if masks[i].sum() > 20 else ''} ({where})")
        return v

    total = (nE - E_vals.shape[0]) + 2 * (cap - start) if cap_evals is not None else 0
    bar = progress_bar(total, progress, desc="shapley", unit="eval", auto_min=200_000)
    anytime = tol is not None or rtol is not None or max_seconds is not None
    reason = None
    est = None
    try:
        parts = [E_vals]
        pending = None  # the last enumerated rows, where the first pairs fit beside them in a call
        for r0 in range(E_vals.shape[0], nE, batch_size):
            r1 = min(nE, r0 + batch_size)
            masks = rg.enumerated_masks(plan, r0, r1)
            if r1 == nE and cap > start and r1 - r0 + 2 <= batch_size:
                pending = masks  # one game call fewer: a short run's cost is mostly per call
                break
            parts.append(values_of(masks, "an enumerated border coalition"))
            bar.update(r1 - r0)
        E_vals = np.concatenate(parts) if len(parts) > 1 else E_vals
        pairs = [P_vals[:2 * start]]
        have = start
        per_call = max(1, batch_size // 2)
        sched = _Schedule(min_samples, cap, anytime) if cap > 0 else None
        for target in (sched.points(start) if sched is not None else ()):
            while have < target:
                if pending is None:
                    j1 = min(target, have + per_call)
                    masks, packed = rg.draw_pairs(seed, have, j1, plan, eng)
                    pairs.append(values_of(masks, f"pairs [{have}, {j1}), seed {seed}"))
                else:
                    e = pending.shape[0]
                    j1 = min(target, have + (batch_size - e) // 2)
                    masks, packed = rg.draw_pairs(seed, have, j1, plan, eng, copy=False)
                    v = values_of(np.concatenate([pending, masks]),  # a fresh array for the game
                                  f"the last {e} enumerated border coalitions or pairs [{have}, {j1}), seed {seed}")
                    E_vals = np.concatenate([E_vals, v[:e]])
                    pairs.append(v[e:])
                    bar.update(e)
                    pending = None
                fit.keep(have, packed)
                bar.update(2 * (j1 - have))
                have = j1
            if anytime and target < cap:
                P_vals = np.concatenate(pairs)
                pairs = [P_vals]
                est = fit.estimate(E_vals, P_vals, have)
                st = _Welford(*est[1])
                if (tol is not None or rtol is not None) and _se_met(st, tol, rtol):
                    reason = "tol"
                elif max_seconds is not None and time.perf_counter() - t_start >= max_seconds:
                    reason = "max_seconds"
                if reason:
                    break
        P_vals = np.concatenate(pairs)
    finally:
        bar.close()
    M = have if cap > 0 else 0
    if est is None or est[1] is None or est[1][2] != M:
        est = fit.estimate(E_vals, P_vals, M)
    values, st, dof = est[0], est[1], None
    if st is None:
        stderr = np.zeros_like(values)
        stop_reason = "exact"
    else:
        stderr = _stderr_of(*st)
        dof = rg.PendingDof(plan, seed, eng, v0, vN, E_vals, P_vals[:2 * M], M)  # when first asked
        stop_reason = reason or ("memory" if cap_evals is None else
                                 "K" if K is not None and (max_evals is None or
                                                           2 + int(K) * (n - 1) <= max_evals)
                                 else "max_evals")
        if stop_reason == "memory":
            warnings.warn(f"the regression sampler stopped at {M} pairs: it keeps every pair's "
                          f"values, and more would hold over {rg.MAX_KEPT_BYTES / 2**20:.0f} MiB "
                          f"(shapcam.regression.MAX_KEPT_BYTES); give K or max_evals, or a "
                          f"permutation sampler, whose memory does not grow", RuntimeWarning,
                          stacklevel=3)
    state = {"n": n, "m": m, "count": M, "sampler": "regression", "plan": plan.as_state(),
             "enum": E_vals, "pairs": P_vals[:2 * M]}
    return _result(values, stderr, m, 2 + nE + 2 * M, 0, M, v_full, v_empty, seed, True, eng, game,
                   stop_reason, state, "regression", dof)


def _stderr(st: _Welford):
    """Standard error of the mean over st.count samples (NaN with fewer than 2)."""
    return _stderr_of(st.mean, st.m2, st.count)


def _stderr_of(mean, m2, c):
    """_stderr from (mean, M2, count). Correctly rounded division and sqrt on every device, so
    device and host agree to the bit: torch divides a CUDA tensor by a Python scalar as a
    multiplication by its reciprocal (1 ulp off), hence a device-tensor denominator; and sqrt, not
    ** 0.5."""
    if c < 2:
        return mean * float("nan")
    if is_torch(m2):
        import torch

        # torch.full, not torch.tensor: no blocking host-to-device copy
        denom = torch.full((), float((c - 1) * c), dtype=torch.float64, device=m2.device)
        return torch.sqrt(m2 / denom)
    return np.sqrt(m2 / float((c - 1) * c))


def _se_met(st: _Welford, tol, rtol) -> bool:
    """The stopping rule: the largest standard error is at most tol, or at most rtol times the
    range of the values (the largest over outputs)."""
    se = host_numpy(_stderr(st))
    worst = float(np.max(se))
    if not np.isfinite(worst) and st.count >= 2 and np.isfinite(host_numpy(st.mean)).all():
        # squared deviations past ~1e308 (values around 1e154 and beyond): no tolerance can ever
        # be met, and a run bounded by tol alone would never stop
        raise ValueError(f"tol / rtol: the standard error overflows float64 at this scale of "
                         f"values (largest |value| {float(np.max(np.abs(host_numpy(st.mean)))):.3g}); "
                         f"rescale the value function (e.g. divide its output by a constant)")
    if not np.isfinite(worst):
        return False
    if tol is not None and worst <= tol:
        return True
    if rtol is not None:
        mean = host_numpy(st.mean)
        spread = float(np.max(mean.max(0) - mean.min(0)))
        return worst <= rtol * spread
    return False


def _resume_state(prev, seed, sampler, n, m, v_empty, v_full, on_device):
    """An earlier run's (merged whole blocks, block in progress), checked against this game."""
    state = _resumable(prev, seed, sampler, n, m, v_empty, v_full)
    if state.get("block_samples") != BLOCK_SAMPLES:
        raise ValueError("resume: the earlier run comes from a shapcam version that summed samples "
                         "in another order; it cannot be continued bit for bit")
    like = v_empty if on_device else None

    def load(mean, m2, count):
        if like is not None:
            import torch

            return _Welford(torch.as_tensor(mean, device=like.device).clone(),
                            torch.as_tensor(m2, device=like.device).clone(), count)
        return _Welford(np.array(host_numpy(mean)), np.array(host_numpy(m2)), count)

    base, block = load(*state["base"]), load(*state["block"])
    return base, (block if block.count else None)


def _resumable(prev, seed, sampler, n, m, v_empty, v_full):
    """prev's state, checked against this run: same seed, sampler, players, outputs, endpoints."""
    state = getattr(prev, "state", None)
    if not isinstance(prev, ShapleyResult) or not state:
        raise TypeError("resume: expected the ShapleyResult of an earlier estimate_shapley run")
    prev_sampler = state.get("sampler", "antithetic" if prev.antithetic else "plain")
    if prev.seed != seed or prev_sampler != sampler:
        raise ValueError(f"resume: the earlier run used seed={prev.seed}, sampler={prev_sampler!r}; "
                         f"this one seed={seed}, sampler={sampler!r}")
    if state["n"] != n or state["m"] != m:
        def outs(k):
            return f"{k} output{'' if k == 1 else 's'}" if k else "scalar values"
        raise ValueError(f"resume: the earlier run had {state['n']} players and {outs(state['m'])}; "
                         f"this game has {n} players and {outs(m)}")
    same = np.array_equal(host_numpy(v_empty).reshape(-1), host_numpy(_as_2d(prev.v_empty)).reshape(-1)) and \
        np.array_equal(host_numpy(v_full).reshape(-1), host_numpy(_as_2d(prev.v_full)).reshape(-1))
    if not same:
        raise ValueError("resume: this game's v(none) / v(all) differ from the earlier run's: "
                         "not the same game")
    return state


def _as_2d(v):
    return np.atleast_1d(host_numpy(v)) if not is_torch(v) else v.reshape(-1)


def _result(values, stderr, m, n_evals, K_eff, count, v_full, v_empty, seed, antithetic, eng, game,
            stop_reason="K", state=None, sampler=None, dof=None):
    if count >= 2 and not is_torch(stderr) and not np.isfinite(stderr).all() and \
            np.isfinite(values).all():
        warnings.warn("the standard errors overflow float64 at this scale of values (squared "
                      "deviations past ~1e308): they are not finite; rescale the value function "
                      "(e.g. divide its output by a constant)", RuntimeWarning, stacklevel=3)
    values, stderr = _to_game_type(values, game), _to_game_type(stderr, game)
    v_full, v_empty = _to_game_type(v_full, game), _to_game_type(v_empty, game)
    if m == 0:
        values, stderr = values[:, 0], stderr[:, 0]
        v_full, v_empty = v_full[0], v_empty[0]
        if not is_torch(v_full):
            v_full, v_empty = float(v_full), float(v_empty)
    res = ShapleyResult(values=values, stderr=stderr, n_evals=int(n_evals), n_permutations=K_eff,
                        n_samples=int(count), v_full=v_full, v_empty=v_empty, seed=seed,
                        antithetic=antithetic, engine=eng, stop_reason=stop_reason, state=state,
                        sampler=sampler or ("antithetic" if antithetic else "plain"), _dof=dof)
    names = getattr(game, "feature_names", None)
    if names is not None:
        res._names = list(names)  # the players' names, for to_shap
    return res


def _to_game_type(a, game: Game):
    """NumPy for host games; a torch tensor on the game's device otherwise."""
    if game.device is None:
        if type(a) is np.ndarray and a.dtype == np.float64:
            return a
        return np.asarray(host_numpy(a), dtype=np.float64)
    import torch

    if is_torch(a):
        return a.to(game.device)
    return torch.as_tensor(np.asarray(a), device=game.device)
