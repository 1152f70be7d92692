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
