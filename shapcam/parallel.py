"""Running an estimate's blocks of samples on the workers of an existing engine: any
``concurrent.futures.Executor`` (a local ``ProcessPoolExecutor``, Dask's ``client.get_executor()``),
a Dask ``distributed.Client``, or Ray.

Why the result is the serial one, bit for bit: permutation k is a pure function of (seed, k, n), and
the estimator's sum has a fixed shape (estimator.BLOCK_SAMPLES samples per block, each block's
Welford state from zero, blocks merged in block order). A worker computes whole blocks — their
states at the block's end and at the stopping rule's checkpoints inside it — and the coordinator
merges them in block order, whatever the number of workers or the order in which they finish.

What crosses the wire: the pickled game once per worker (Dask scatters it to every worker, Ray puts
it in the object store; a concurrent.futures executor has no per-worker channel, so the bytes
travel with every task and are unpickled once per worker process), and per block a task of a few
numbers out and, back, 2 [n, m] float64 arrays per cut (block end or checkpoint) — never the
evaluations.

Failures: the value function raising on a worker is the caller's error: it is raised here, with
the evaluations it was computing and the worker's traceback, and nothing is retried. A task lost
to the infrastructure (its future raises: a killed process, a lost Dask worker, a Ray worker
crash) is resubmitted, up to RETRIES times; a ProcessPoolExecutor broken by a dead process is
replaced by a fresh one of the same size for the rest of the run (with a warning). Blocks are
merged once each, by block index: nothing is lost or counted twice.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import pickle
import threading
import traceback
import uuid
import warnings

import numpy as np

# Times one block may be lost to the infrastructure before the run gives up.
RETRIES = 3
# Blocks in flight per worker: enough to keep workers busy while the coordinator merges.
INFLIGHT_PER_WORKER = 2


class WorkerLost(RuntimeError):
    """A block could not be computed: its task was lost to the infrastructure RETRIES + 1 times."""


# --- the worker side -------------------------------------------------------------------------

# token -> the unpickled sampler of a run, kept in each worker process, one copy per thread (a
# game may keep state between chunks, e.g. TruncatedGame along a permutation).
_LOCAL = threading.local()
_KEEP = 4


def _dumps(obj) -> bytes:
    try:
        import cloudpickle
    except ImportError:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _sampler(token, payload):
    cache = getattr(_LOCAL, "samplers", None)
    if cache is None:
        cache = _LOCAL.samplers = {}
    s = cache.get(token)
    if s is None:
        s = pickle.loads(payload)
        while len(cache) >= _KEEP:
            cache.pop(next(iter(cache)))
        cache[token] = s
    return s


def run_task(token, payload, task):
    """What a worker runs: task = (first block, [[(cut, is_checkpoint)...] per block], initial
    state of the first block or None). Returns ("ok", [[(cut, mean, m2)...] per block]) or
    ("error", pickled exception or None, "Type: message", traceback text): an exception of the
    value function is data, not a lost task, so the coordinator can tell the two apart."""
    from .estimator import BLOCK_SAMPLES, _Feed, _Run, _Welford

    try:
        s = _sampler(token, payload)
        j0, cuts, init = task
        state = _Welford(np.array(init[0]), np.array(init[1]), init[2]) if init else None
        end = cuts[-1][-1][0]
        feed = None
        out = []
        for j, block_cuts in zip(range(j0, j0 + len(cuts)), cuts):
            # each block from zero (the first may continue a resumed run's block)
            run = _Run(s, j * BLOCK_SAMPLES, state if j == j0 else None)
            if feed is None:
                feed = _Feed(s, run.next_sample * s.per_sample)
            snaps = []
            for cut, _check in block_cuts:
                run.advance(cut, feed, end)
                snaps.append((cut, run.state.mean.copy(), run.state.m2.copy()))
            out.append(snaps)
        return ("ok", out)
    except Exception as exc:  # noqa: BLE001 - sent back whole, raised by the coordinator
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            blob = pickle.dumps(exc)
            pickle.loads(blob)
        except Exception:  # noqa: BLE001 - an exception that does not survive pickling
            blob = None
        return ("error", blob, f"{type(exc).__name__}: {exc}", tb)


# --- engines ---------------------------------------------------------------------------------


class _Engine:
    """What run_blocks asks of an engine; the defaults fit futures with result() and cancel()."""

    owned = False  # made by this run (closed at its end)

    def result(self, h):
        return h.result()

    def cancel(self, h):
        h.cancel()

    def replacement(self):
        """A fresh engine to continue on after this one broke, or None."""
        return None

    def close(self):
        pass


class _Futures(_Engine):
    """A concurrent.futures.Executor (or anything with submit() -> a concurrent Future)."""

    def __init__(self, executor, owned=False):
        self.executor, self.owned = executor, owned

    def workers(self):
        return int(getattr(self.executor, "_max_workers", None) or os.cpu_count() or 1)

    def put(self, payload):
        return payload

    def submit(self, *args):
        return self.executor.submit(run_task, *args)

    def wait_any(self, handles):
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        return done

    def replacement(self):
        if isinstance(self.executor, cf.ProcessPoolExecutor):
            return _Futures(cf.ProcessPoolExecutor(max_workers=self.workers()), owned=True)
        return None

    def close(self):
        if self.owned:
            self.executor.shutdown(wait=False, cancel_futures=True)


class _Dask(_Engine):
    """A distributed.Client: the game is scattered to every worker once."""

    def __init__(self, client):
        self.client = client

    def workers(self):
        info = self.client.scheduler_info()
        return max(1, sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()))

    def put(self, payload):
        return self.client.scatter(payload, broadcast=True, hash=False)

    def submit(self, *args):
        return self.client.submit(run_task, *args, pure=False)

    def wait_any(self, handles):
        from distributed import wait

        try:
            done, _ = wait(list(handles), return_when="FIRST_COMPLETED")
        except Exception:  # noqa: BLE001 - FuturesCancelledError: a worker or the game's data died
            # the cancelled ones are done; their result() raises, and the run retries them (then
            # raises WorkerLost), as for any task lost to the infrastructure
            done = [h for h in handles if h.status != "pending"]
            if not done:
                raise
        return done


class _Ray(_Engine):
    """Ray (the module, or the string "ray"): the game goes to the object store once."""

    def __init__(self):
        import ray

        if not ray.is_initialized():
            ray.init()
        self.ray = ray
        self.remote = ray.remote(run_task)

    def workers(self):
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def put(self, payload):
        return self.ray.put(payload)

    def submit(self, *args):
        return self.remote.remote(*args)

    def wait_any(self, handles):
        ready, _ = self.ray.wait(list(handles), num_returns=1)
        return ready

    def result(self, h):
        return self.ray.get(h)

    def cancel(self, h):
        try:
            self.ray.cancel(h)
        except Exception:  # noqa: BLE001 - already finished or gone
            pass


def engine_for(executor):
    """The engine behind executor=: an int (a ProcessPoolExecutor of that many processes, owned by
    the run), a concurrent.futures.Executor, a Dask Client, or Ray ("ray" or the ray module)."""
    if isinstance(executor, bool):
        raise TypeError("executor: expected an Executor, a Dask Client, 'ray' or a worker count")
    if isinstance(executor, (int, np.integer)):
        if executor < 1:
            raise ValueError(f"executor: need at least 1 worker process, got {executor}")
        return _Futures(cf.ProcessPoolExecutor(max_workers=int(executor)), owned=True)
    if executor == "ray" or getattr(executor, "__name__", None) == "ray":
        return _Ray()
    mod = type(executor).__module__ or ""
    if mod.startswith("distributed") and hasattr(executor, "scatter"):
        return _Dask(executor)
    if isinstance(executor, cf.Executor) or callable(getattr(executor, "submit", None)):
        return _Futures(executor)
    raise TypeError(f"executor: expected a concurrent.futures.Executor, a Dask Client, 'ray' or a "
                    f"worker count, got {type(executor).__name__}")


# --- the coordinator -------------------------------------------------------------------------


def _raise_remote(j, blob, what, tb):
    exc = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:  # noqa: BLE001
            exc = None
    if not isinstance(exc, BaseException):
        raise RuntimeError(f"the value function raised on a worker (block {j}): {what}\n"
                           f"--- worker traceback ---\n{tb}")
    if hasattr(exc, "add_note"):
        exc.add_note(f"shapcam: raised on a worker (block {j}); worker traceback:\n{tb}")
    raise exc


def _blocks_per_task(sampler, sched, start, workers):
    """Blocks per task: at least one batch of evaluations, and (when the run is bounded) small
    enough for about 4 tasks per worker."""
    from .estimator import BLOCK_SAMPLES

    per_block = BLOCK_SAMPLES * sampler.per_sample
    by_batch = -(-sampler.batch_size // per_block)
    n_blocks = -(-(sched.cap - start) // BLOCK_SAMPLES)
    by_spread = max(1, n_blocks // (4 * workers))
    return max(1, min(by_batch, by_spread))


def run_blocks(executor, sampler, sched, start, partial, bar):
    """The blocks of a run, in block order, as estimator._fold takes them; computed on executor's
    workers in tasks of a few blocks, up to INFLIGHT_PER_WORKER tasks per worker ahead of the
    merge. Closing the generator (a stopping rule fired, or an error) cancels what is in flight."""
    from .estimator import BLOCK_SAMPLES, _Welford

    eng = engine_for(executor)
    owned = [eng] if eng.owned else []  # engines this run made, closed at its end
    pending = {}   # handle -> (attempts, task)
    done = {}      # block -> [(cut, is_checkpoint, _Welford)]
    try:
        token = uuid.uuid4().hex
        payload = _dumps(sampler)
        ref = eng.put(payload)
        window = max(2, INFLIGHT_PER_WORKER * eng.workers())
        per_task = _blocks_per_task(sampler, sched, start, eng.workers())
        blocks = sched.blocks(start)
        first_block = start // BLOCK_SAMPLES
        nxt = first_block

        def submit(attempts, task):
            nonlocal eng, ref
            try:
                h = eng.submit(token, ref, task)
            except Exception as exc:  # noqa: BLE001 - a broken or shut-down engine
                fresh = eng.replacement()
                if fresh is None:
                    raise WorkerLost(f"the executor refused block {task[0]}: {exc!r}") from exc
                warnings.warn(f"shapcam: the executor broke ({exc!r}); the remaining blocks run "
                              f"on a fresh ProcessPoolExecutor of {fresh.workers()} workers",
                              RuntimeWarning, stacklevel=5)
                owned.append(fresh)
                eng, ref = fresh, fresh.put(payload)
                h = eng.submit(token, ref, task)
            pending[h] = (attempts, task)

        def next_task():
            js = []
            for j in blocks:
                js.append(j)
                if len(js) == per_task:
                    break
            if not js:
                return None
            init = None
            if js[0] == first_block and partial is not None:
                init = (np.asarray(partial.mean), np.asarray(partial.m2), partial.count)
            return (js[0], [[(c, bool(k)) for c, k in sched.cuts(j, start)] for j in js], init)

        def top_up():
            while len(pending) < window:
                task = next_task()
                if task is None:
                    return
                submit(0, task)

        top_up()
        while True:
            if nxt in done:
                yield nxt, done.pop(nxt)
                nxt += 1
                top_up()
                continue
            if not pending:
                return
            for h in eng.wait_any(list(pending)):
                attempts, task = pending.pop(h)
                try:
                    out = eng.result(h)
                except Exception as exc:  # noqa: BLE001 - lost to the infrastructure: retry
                    if attempts >= RETRIES:
                        raise WorkerLost(f"blocks from {task[0]} were lost {attempts + 1} times "
                                         f"(their worker died, or the game's data with it: does "
                                         f"the value function end its process?); last: "
                                         f"{exc!r}") from exc
                    submit(attempts + 1, task)
                    continue
                if out[0] == "error":
                    _raise_remote(task[0], *out[1:])
                j0, cuts, init = task
                evals = 0
                for j, block_cuts, snaps in zip(range(j0, j0 + len(cuts)), cuts, out[1]):
                    lo = j * BLOCK_SAMPLES
                    done[j] = [(cut, check, _Welford(mean, m2, cut - lo))
                               for (cut, check), (_c, mean, m2) in zip(block_cuts, snaps)]
                    evals += block_cuts[-1][0] - max(lo, start)
                bar.update(evals * sampler.per_sample)
            top_up()
    finally:
        for h in list(pending):
            eng.cancel(h)
        for e in owned:
            e.close()
