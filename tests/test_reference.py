"""The RNG and permutation contract of the reference engine (shapcam/reference.py)."""
import numpy as np
import pytest
from scipy import stats

from shapcam import ops, reference


def test_philox_known_answers():
    # Random123's known-answer vectors for philox4x32_10.
    kat = [
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ]
    for ctr, key, want in kat:
        assert reference.philox4x32_10(ctr, key).tolist() == want


@pytest.mark.parametrize("n", [1, 2, 3, 10, 197])
def test_permutations_are_permutations(engine, n):
    perm = ops.permutations(3, 0, 50, n, engine=engine)
    assert perm.dtype == np.int32 and perm.shape == (50, n)
    np.testing.assert_array_equal(np.sort(perm, 1), np.tile(np.arange(n), (50, 1)))
    rank = ops.ranks(3, 0, 50, n, engine=engine)
    np.testing.assert_array_equal(np.take_along_axis(rank, perm, 1), np.tile(np.arange(n), (50, 1)))


def test_pure_function_of_seed_k_n(engine):
    full = ops.permutations(77, 0, 40, 13, engine=engine)
    np.testing.assert_array_equal(ops.permutations(77, 17, 29, 13, engine=engine), full[17:29])
    assert not np.array_equal(ops.permutations(78, 0, 40, 13, engine=engine), full)


def test_antithetic_pairs_are_reverses(engine):
    perm = ops.permutations(5, 0, 20, 9, antithetic=True, engine=engine)
    np.testing.assert_array_equal(perm[1::2], perm[0::2, ::-1])
    plain = ops.permutations(5, 0, 10, 9, antithetic=False, engine=engine)
    np.testing.assert_array_equal(perm[0::2], plain)  # pair j draws like permutation j


def test_permutations_are_uniform():
    """All 24 orders of 4 players appear equally often: chi-square over 24 000 permutations at a
    significance of 1e-4 (seeded, so deterministic)."""
    perm = reference.permutations(2024, 0, 24_000, 4, antithetic=False)
    codes = perm @ np.array([64, 16, 4, 1])
    counts = np.unique(codes, return_counts=True)[1]
    assert len(counts) == 24
    assert stats.chisquare(counts).pvalue > 1e-4
    # Each player's position is uniform as well for a bigger n.
    perm = reference.permutations(7, 0, 20_000, 25, antithetic=False)
    for p in (0, 12, 24):
        pos = np.argmax(perm == p, axis=1)
        assert stats.chisquare(np.bincount(pos, minlength=25)).pvalue > 1e-4


def test_masks_are_prefixes(engine):
    n = 7
    m = ops.masks(11, 0, 3 * (n - 1), n, engine=engine)
    perm = ops.permutations(11, 0, 3, n, engine=engine)
    for e in range(3 * (n - 1)):
        k, t = divmod(e, n - 1)
        want = np.zeros(n, bool)
        want[perm[k, : t + 1]] = True
        np.testing.assert_array_equal(m[e], want)
