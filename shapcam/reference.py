"""NumPy reference engine: the pure twin of csrc/ (same names, same bits).

Every function here follows the contract in ``csrc/include/shapcam/permutation.h``:
Philox-4x32-10 keyed by the seed, Fisher–Yates driven by its words, the permutations of a
sampling design's group derived from one draw (antithetic: ``2j+1`` is the reverse of ``2j``), evaluation ``e = k*(n-1) + (t-1)``, and the prefix
test ``rank_k[p] < t``. The native engines are tested bit for bit against these functions.
"""
from __future__ import annotations

import numpy as np

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint32(0x9E3779B9)
_W1 = np.uint32(0xBB67AE85)
_LO = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def philox4x32_10(ctr, key):
    """Philox-4x32-10 over a batch of counters.

    ctr: [..., 4] uint32, key: [..., 2] uint32 (broadcastable) -> [..., 4] uint32.
    """
    ctr = np.asarray(ctr, dtype=np.uint32)
    key = np.asarray(key, dtype=np.uint32)
    c0, c1, c2, c3 = (ctr[..., i].astype(np.uint64) for i in range(4))
    k0 = np.array(key[..., 0], dtype=np.uint32)
    k1 = np.array(key[..., 1], dtype=np.uint32)
    with np.errstate(over="ignore"):
        for _ in range(10):
            p0 = _M0 * c0
            p1 = _M1 * c2
            c0, c1, c2, c3 = ((p1 >> _32) ^ c1 ^ k0, p1 & _LO, (p0 >> _32) ^ c3 ^ k1, p0 & _LO)
            k0 = k0 + _W0
            k1 = k1 + _W1
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


PLAIN, ANTITHETIC, STRATIFIED = 1, 2, 4  # sampling designs: permutations per sample


def group_of(antithetic) -> int:
    """The sampling design as permutations per sample (csrc/include/shapcam/permutation.h):
    True -> 2 (antithetic pairs), False -> 1 (plain), or 1, 2, 4 given as an int."""
    if isinstance(antithetic, (bool, np.bool_)):
        return ANTITHETIC if antithetic else PLAIN
    if isinstance(antithetic, (int, np.integer)) and int(antithetic) in (PLAIN, ANTITHETIC, STRATIFIED):
        return int(antithetic)
    raise ValueError(f"antithetic: expected a bool or a group size 1, 2 or 4, got {antithetic!r}")


def philox_block(seed: int, base, block, lane: int = 0) -> np.ndarray:
    """permutation.h::draw_block over arrays: philox(ctr = (block, base & 0xffffffff, base >> 32,
    lane), key = (seed & 0xffffffff, seed >> 32)), base and block broadcast together -> [..., 4]
    uint32. Lane 0 holds the permutations' Fisher–Yates draws; lane 1 the regression sampler's
    pair sizes (shapcam/regression.py)."""
    base = np.asarray(base, dtype=np.uint64)
    block = np.asarray(block, dtype=np.uint32)
    shape = np.broadcast_shapes(base.shape, block.shape)
    ctr = np.zeros(shape + (4,), dtype=np.uint32)
    ctr[..., 0] = block
    ctr[..., 1] = (base & _LO).astype(np.uint32)
    ctr[..., 2] = (base >> _32).astype(np.uint32)
    ctr[..., 3] = lane
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)
    return philox4x32_10(ctr, key)


def _draws(seed: int, ks: np.ndarray, n: int, antithetic) -> np.ndarray:
    """Fisher–Yates draws of permutations ks: [K, n-1] uint32."""
    blocks = (n - 1 + 3) // 4 if n > 1 else 0
    base = (ks // group_of(antithetic)).astype(np.uint64)
    words = philox_block(seed, base[:, None], np.arange(blocks, dtype=np.uint32)[None, :])
    return words.reshape(len(ks), 4 * blocks)[:, : max(n - 1, 0)]


def permutations(seed: int, k0: int, k1: int, n: int, antithetic: bool = True) -> np.ndarray:
    """Permutations k0..k1-1 of n players: [K, n] int32 (perm[k, t] is the player at position t)."""
    ks = np.arange(k0, k1, dtype=np.int64)
    K = len(ks)
    perm = np.tile(np.arange(n, dtype=np.int32), (K, 1))
    if K == 0 or n < 2:
        return perm
    draws = _draws(seed, ks, n, antithetic).astype(np.uint64)
    rows = np.arange(K)
    for i in range(n - 1, 0, -1):
        j = ((draws[:, n - 1 - i] * np.uint64(i + 1)) >> _32).astype(np.int64)  # bounded(r, i+1)
        a = perm[rows, i].copy()
        perm[rows, i] = perm[rows, j]
        perm[rows, j] = a
    g = group_of(antithetic)
    v = ks % g
    if g == STRATIFIED:  # permutation.h::group_variant: rotate left by n // 2 (bit 1), then reverse (bit 0)
        rot = (v & 2).astype(bool)
        perm[rot] = np.roll(perm[rot], -(n // 2), axis=1)
    odd = (v & 1).astype(bool)
    perm[odd] = perm[odd, ::-1]
    return perm


def ranks_of(perm: np.ndarray) -> np.ndarray:
    """Inverse permutations: rank[k, perm[k, t]] = t. [K, n] int32."""
    K, n = perm.shape
    rank = np.empty_like(perm)
    rank[np.arange(K)[:, None], perm] = np.arange(n, dtype=np.int32)[None, :]
    return rank


def ranks(seed: int, k0: int, k1: int, n: int, antithetic: bool = True) -> np.ndarray:
    """Ranks of permutations k0..k1-1: [K, n] int32."""
    return ranks_of(permutations(seed, k0, k1, n, antithetic))


def eval_index(e, n: int):
    """e -> (k, t), t in 1..n-1."""
    e = np.asarray(e, dtype=np.int64)
    return e // (n - 1), e % (n - 1) + 1


def _chunk_ranks(seed, e0, e1, n, antithetic):
    k, t = eval_index(np.arange(e0, e1), n)
    k_lo = int(k[0])
    r = ranks(seed, k_lo, int(k[-1]) + 1, n, antithetic)
    return r[k - k_lo], t


def masks(seed: int, e0: int, e1: int, n: int, antithetic: bool = True) -> np.ndarray:
    """Prefix masks of evaluations [e0, e1): [B, n] bool."""
    if e1 <= e0:
        return np.zeros((0, n), dtype=bool)
    r, t = _chunk_ranks(seed, e0, e1, n, antithetic)
    return r < t[:, None]


def masked_apply(seed, e0, e1, n, antithetic, x, players, baseline, out=None):
    """out[b] = where(mask_{e0+b}[players], x, baseline): [B, *x.shape].

    x: array; players: int array broadcastable to x.shape (ids 0..n-1); baseline: scalar or x.shape.
    """
    x = np.asarray(x)
    m = masks(seed, e0, e1, n, antithetic)  # [B, n]
    keep = m[:, np.broadcast_to(players, x.shape)]  # [B, *x.shape]
    res = np.where(keep, x[None], np.asarray(baseline, dtype=x.dtype))
    if out is None:
        return res
    out[...] = res
    return out


def accumulate(seed, k0, n_samples, n, antithetic, values, v_empty, v_full, count0, mean, m2,
               block=0, base_mean=None, base_m2=None):
    """Push complete samples into the Welford state (mean, m2 [n, m], float64, in place); with
    block > 0, in blocks of that many samples, a finished block folded into (base_mean, base_m2).

    values: [n_samples * pps * (n-1), m] float64; the same arithmetic, in the same order, as
    csrc/include/shapcam/accumulate.h, so the native engines match to the last bit.
    """
    pps = group_of(antithetic)
    P = n_samples * pps
    if P == 0:
        return
    m = mean.shape[1]
    r = ranks(seed, k0, k0 + P, n, antithetic)  # [P, n]
    v = np.empty((P, n + 1, m), dtype=np.float64)
    v[:, 0] = v_empty
    v[:, n] = v_full
    v[:, 1:n] = np.asarray(values, dtype=np.float64).reshape(P, n - 1, m)
    rows = np.arange(P)[:, None]
    phi = v[rows, r + 1] - v[rows, r]  # [P, n, m]: marginal of each player in each permutation
    if pps > 1:  # accumulate.h: summed in permutation order, times the reciprocal
        x = phi[0::pps].copy()
        for g in range(1, pps):
            x = x + phi[g::pps]
        phi = x * (1.0 / pps)
    for s in range(n_samples):
        i = count0 + s
        in_block = i % block if block > 0 else i
        x = phi[s]
        delta = x - mean
        mean += delta / float(in_block + 1)
        m2 += delta * (x - mean)
        if block > 0 and in_block + 1 == block:
            merge_block(base_mean, base_m2, i + 1 - block, mean, m2, block)
            mean[...] = 0.0
            m2[...] = 0.0


def merge_block(base_mean, base_m2, na, mean, m2, nb):
    """accumulate.h::merge_block on arrays, in place on the base: the state of the base's na
    samples followed by nb samples of (mean, m2); a copy when na = 0."""
    if na == 0:
        base_mean[...] = mean
        base_m2[...] = m2
        return
    total = float(na + nb)
    delta = mean - base_mean
    base_m2[...] = (base_m2 + m2) + delta * delta * (float(na) * float(nb) / total)
    base_mean[...] = base_mean + delta * (float(nb) / total)


def cell_subsets(members, rank, n, t):
    """Subset index of each cell's players present in prefixes of size t (walk.h::cell_subset).

    members [P, size] (-1 pads) of the cell touched in each of P permutations; rank [P, n];
    t an int. -> [P] int64.
    """
    P, size = members.shape
    valid = (members >= 0) & (members < n)
    r = np.where(valid, rank[np.arange(P)[:, None], np.where(valid, members, 0)], n)
    return ((r < t).astype(np.int64) << np.arange(size, dtype=np.int64)).sum(1)


def prefix_walk(seed, e0, e1, n, antithetic, tables, members, cell_of, z_empty):
    """The incremental prefix walk of a cell game (csrc/include/shapcam/walk.h): [B, d], row b =
    z of evaluation e0 + b. tables [cells, 2^size, d]; members [cells, size] int (-1 pads);
    cell_of [n]; z_empty [d]. Same expression, same order as the native engines:
    z_t = z_{t-1} + (T[c, hi] - T[c, lo]) from z_0 = z_empty."""
    tables = np.asarray(tables)
    d = tables.shape[2]
    if e1 <= e0:
        return np.zeros((0, d), dtype=tables.dtype)
    per = n - 1
    k_lo, k_hi = e0 // per, (e1 - 1) // per + 1
    perm = permutations(seed, k_lo, k_hi, n, antithetic)
    rank = ranks_of(perm)
    P = k_hi - k_lo
    rows = np.arange(P)
    out = np.empty((e1 - e0, d), dtype=tables.dtype)
    z = np.repeat(np.asarray(z_empty, dtype=tables.dtype)[None], P, 0)
    first_e = (k_lo + rows) * per
    last_t = min(per, e1 - k_lo * per)
    for t in range(1, last_t + 1):
        c = np.asarray(cell_of)[perm[:, t - 1]]
        mem = np.asarray(members)[c]
        lo, hi = cell_subsets(mem, rank, n, t - 1), cell_subsets(mem, rank, n, t)
        z = z + (tables[c, hi] - tables[c, lo])
        e = first_e + t - 1
        sel = (e >= e0) & (e < e1)
        out[e[sel] - e0] = z[sel]
    return out
