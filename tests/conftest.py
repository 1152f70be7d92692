"""Shared fixtures: the engines and devices every cross-engine test runs over."""
import numpy as np
import pytest

import shapcam
from shapcam import _engine

HOST_ENGINES = ["reference"] + (["native"] if _engine.native() is not None else [])


def _cuda_ok():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available() and _engine.cuda_built()


CUDA = _cuda_ok()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and shapcam._C built with CUDA")
requires_native = pytest.mark.skipif(_engine.native() is None, reason="shapcam._C is not built")


@pytest.fixture(params=HOST_ENGINES)
def engine(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_report_header(config):
    return f"shapcam engine: {shapcam.engine_info()}"


# The modules written for the permutation machinery (anytime stopping, resume, workers, engines,
# CUDA, hardening, ...) count permutations and evaluations the way the permutation designs spend
# them; they run with estimate_shapley's default set to the permutation default. The default
# itself ("regression" where it applies) is tested in test_regression.py and test_samplers.py.
DEFAULT_AS_IS = {"test_regression", "test_samplers", "test_adversarial", "test_tabular"}


@pytest.fixture(autouse=True)
def _permutation_default(request, monkeypatch):
    if request.module.__name__.rsplit(".", 1)[-1] not in DEFAULT_AS_IS:
        from shapcam import estimator

        monkeypatch.setattr(estimator, "DEFAULT_SAMPLER", estimator.PERMUTATION_DEFAULT)
