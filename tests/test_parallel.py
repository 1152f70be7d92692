"""executor=: blocks of samples on other workers give the serial result bit for bit, whatever the
number of workers or the order they finish in; lost workers are recomputed; errors come back."""
import concurrent.futures as cf
import multiprocessing
import os
import signal
import sys

import numpy as np
import pytest

import shapcam
from shapcam import parallel
from shapcam.estimator import BLOCK_SAMPLES

cloudpickle = pytest.importorskip("cloudpickle")
# The games below are defined here; workers started by spawn (Dask) cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N = 11
W = np.random.default_rng(5).normal(size=N)


def game(masks):
    x = masks.astype(np.float64)
    return np.stack([(x * W).sum(1) + x[:, 0] * x[:, 3] - x[:, 2] * x[:, 5] * x[:, 7],
                     np.tanh((x * W).sum(1))], axis=1)


def slow_then_fast(masks):
    # Blocks finish out of order: the first evaluations are the slowest.
    import time

    x = masks.astype(np.float64)
    if masks.shape[0] and x[:, 4].mean() > 0.5:
        time.sleep(0.002 * masks.shape[0] ** 0.5)
    return game(masks)


def serial(**kw):
    kw.setdefault("batch_size", 40)
    kw.setdefault("sampler", "antithetic")  # the sizes below count pairs
    return shapcam.estimate_shapley(game, N, seed=11, **kw)


def same(a, b):
    return (np.array_equal(a.values, b.values) and np.array_equal(a.stderr, b.stderr)
            and a.n_evals == b.n_evals and a.n_samples == b.n_samples and a.stop_reason == b.stop_reason)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_process_pool_is_bit_identical(workers):
    K = 2 * BLOCK_SAMPLES * 5 + 6  # several blocks, the last one partial
    ref = serial(K=K)
    with cf.ProcessPoolExecutor(workers) as ex:
        got = serial(K=K, executor=ex)
    assert same(got, ref)
    assert ref.n_samples > 3 * BLOCK_SAMPLES


def test_out_of_order_threads_and_plain_sampling():
    ref = shapcam.estimate_shapley(slow_then_fast, N, K=150, seed=2, antithetic=False, batch_size=23)
    with cf.ThreadPoolExecutor(4) as ex:
        got = shapcam.estimate_shapley(slow_then_fast, N, K=150, seed=2, antithetic=False,
                                       batch_size=23, executor=ex)
    assert same(got, ref)


def test_int_executor_anytime_and_resume():
    ref = serial(K=None, tol=0.02)
    assert ref.stop_reason == "tol"
    got = serial(K=None, tol=0.02, executor=2)
    assert same(got, ref)
    # resume on workers from a serial run that stopped inside a block
    first = serial(K=2 * (BLOCK_SAMPLES + 3))
    assert first.n_samples % BLOCK_SAMPLES
    cont = serial(K=300, resume=first, executor=2)
    assert same(cont, serial(K=300))
    budget = serial(K=None, max_evals=2 + 57 * 2 * (N - 1), executor=2)
    assert budget.n_samples == 57 and budget.stop_reason == "max_evals"


def test_masked_input_game_travels():
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    players = np.arange(12).reshape(3, 4)

    g = shapcam.MaskedInputGame(lambda b: b.reshape(len(b), -1).sum(1) ** 2, x, players=players)
    ref = shapcam.estimate_shapley(g, K=100, seed=1, batch_size=64)
    got = shapcam.estimate_shapley(g, K=100, seed=1, batch_size=64, executor=2)
    assert same(got, ref)


def raising(masks):
    x = masks.astype(np.float64)
    if (x.sum(1) == 7).any() and masks.shape[0] < 60:
        raise ZeroDivisionError("the model fell over")
    return x @ W


def test_value_fn_error_names_the_evaluations():
    with cf.ProcessPoolExecutor(2) as ex, pytest.raises(ZeroDivisionError) as info:
        shapcam.estimate_shapley(raising, N, K=64, seed=0, batch_size=50, executor=ex)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "evaluations [" in notes and "on a worker" in notes and "fell over" in notes
    # and serially, the same evaluations are named
    with pytest.raises(ZeroDivisionError) as info2:
        shapcam.estimate_shapley(raising, N, K=64, seed=0, batch_size=50)
    assert "evaluations [" in "\n".join(info2.value.__notes__)


def make_suicidal(marker):
    parent = os.getpid()

    def value(masks):
        # The first worker process to get here dies (SIGKILL), once: the task is lost, not failed.
        if os.getpid() != parent and not os.path.exists(marker):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL)
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
            except FileExistsError:
                pass
        return game(masks)
    return value


def test_killed_worker_process_is_recomputed(tmp_path):
    ref = serial(K=200)
    value = make_suicidal(str(tmp_path / "died"))
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as ex:
        with pytest.warns(RuntimeWarning, match="fresh ProcessPoolExecutor"):
            got = shapcam.estimate_shapley(value, N, K=200, seed=11, batch_size=40, executor=ex,
                                           sampler="antithetic")
    assert (tmp_path / "died").exists()
    assert same(got, ref)


class Flaky(cf.Executor):
    """An executor whose tasks are lost (their futures raise) `losses` times, then run here."""

    def __init__(self, losses):
        self.losses, self.submitted = losses, 0

    def submit(self, fn, *args, **kwargs):
        self.submitted += 1
        f = cf.Future()
        if self.losses > 0:
            self.losses -= 1
            f.set_exception(ConnectionResetError("worker went away"))
        else:
            f.set_result(fn(*args, **kwargs))
        return f


def test_lost_tasks_are_retried_then_reported():
    ref = serial(K=100)
    flaky = Flaky(losses=2)
    assert same(serial(K=100, executor=flaky), ref)  # lost twice, recomputed, merged once
    assert flaky.submitted == 2 + -(-50 // BLOCK_SAMPLES)
    with pytest.raises(parallel.WorkerLost, match="lost 4 times"):
        serial(K=100, executor=Flaky(losses=10**9))  # never hangs: RETRIES, then an error


def test_executor_argument_errors():
    with pytest.raises(TypeError, match="executor"):
        serial(K=10, executor=object())
    with pytest.raises(ValueError, match="at least 1"):
        serial(K=10, executor=0)


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=50)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_dask_local_cluster_is_bit_identical(dask_client):
    ref = serial(K=250)
    assert same(serial(K=250, executor=dask_client), ref)
    assert same(serial(K=250, executor=dask_client.get_executor()), ref)


def test_dask_killed_worker_is_recomputed(dask_client, tmp_path):
    ref = serial(K=200)
    value = make_suicidal(str(tmp_path / "died"))
    got = shapcam.estimate_shapley(value, N, K=200, seed=11, batch_size=40, executor=dask_client,
                                   sampler="antithetic")
    assert (tmp_path / "died").exists()
    assert same(got, ref)


def test_dask_game_that_kills_every_worker_raises_worker_lost():
    # Not the module's cluster: this game takes every worker down (the nannies restart them, but
    # the scattered game is lost with them), so the run must end in WorkerLost, not in Dask's
    # FuturesCancelledError.
    distributed = pytest.importorskip("distributed")
    parent = os.getpid()

    def deadly(masks):
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return game(masks)

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=50) as cluster, \
            distributed.Client(cluster) as client:
        with pytest.raises(parallel.WorkerLost, match="worker died"):
            shapcam.estimate_shapley(deadly, N, K=64, seed=1, batch_size=40, executor=client,
                                     sampler="antithetic")


def test_ray_is_bit_identical():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert same(serial(K=150, executor="ray"), serial(K=150))
    finally:
        ray.shutdown()


def saturating(masks):
    # v(S) = min(|S|, 4) / 4 (+ a player-weighted term that saturates the same way): once a
    # prefix holds 4 players its value is v(all), so truncation loses nothing here.
    c = masks.sum(1)
    return np.minimum(c, 4) / 4.0 + np.where(c >= 4, 0.0, masks[:, 0] * 0.1)


def test_truncated_game_skips_saturated_prefixes_without_changing_a_bit():
    n = 12
    full = shapcam.estimate_shapley(saturating, n, K=40, seed=3, batch_size=25)
    g = shapcam.TruncatedGame(saturating, n, tol=0.0, step=3)
    cut = shapcam.estimate_shapley(g, K=40, seed=3, batch_size=25)
    assert same(cut, full)
    assert g.skipped > 0.4 * 40 * (n - 1) and g.evaluated + g.skipped == 40 * (n - 1)
    # on workers (tasks start on permutation boundaries; each thread keeps its own walk state)
    with cf.ThreadPoolExecutor(3) as ex:
        par = shapcam.estimate_shapley(shapcam.TruncatedGame(saturating, n, tol=0.0, step=3),
                                       K=40, seed=3, batch_size=25, executor=ex)
    assert same(par, full)


def test_truncation_trades_bias_for_evaluations():
    # A game that is not saturated: truncation at a loose tolerance moves the estimate, keeps
    # efficiency exact, and spends fewer evaluations.
    n = 10
    f = lambda m: np.sqrt(m @ np.arange(1.0, n + 1))  # noqa: E731
    exact = shapcam.exact_shapley(f, n).values
    g = shapcam.TruncatedGame(f, n, tol=1.0, step=1)
    res = shapcam.estimate_shapley(g, K=2000, seed=0)
    assert g.skipped > 0
    assert abs(res.efficiency_gap) < 1e-12
    assert np.abs(res.values - exact).max() > 4 * np.max(res.stderr)  # biased, and says so in docs
    with pytest.raises(ValueError, match="tol"):
        shapcam.TruncatedGame(f, n, tol=-1)


def test_data_valuation_example_runs_and_agrees_on_dask(dask_client):
    pytest.importorskip("sklearn")
    from shapcam.examples import data_valuation as dv

    local, problem, _, made = dv.value_data(n_train=24, n_val=80, K=6, truncate=0.01)
    assert made is not None and made <= local.n_evals
    remote, _, _, _ = dv.value_data(n_train=24, n_val=80, K=6, truncate=0.01, executor=dask_client)
    assert same(remote, local)
    out = dv.checks(local.values, problem)
    assert 0.0 <= out["detection_rate"] <= 1.0 and out["flipped"] == 2
    assert dv.main(["--n-train", "20", "--n-val", "60", "-K", "4"]) == 0
