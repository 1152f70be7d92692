"""Build, import and fallback: importing never builds; without shapcam._C the reference works."""
import os
import subprocess
import sys

import numpy as np

import shapcam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_engine_info_keys():
    info = shapcam.engine_info()
    for key in ("native", "cuda_built", "cuda_available"):
        assert isinstance(info[key], bool)
    assert info["default_engine"] in ("native", "reference")
    if info["cuda_available"]:
        assert info["cuda_built"] and info["native"]


def test_works_without_the_extension():
    code = (
        "import sys; sys.modules['shapcam._C'] = None\n"  # makes `import shapcam._C` fail
        "import numpy as np, shapcam\n"
        "info = shapcam.engine_info()\n"
        "assert info['native'] is False and info['default_engine'] == 'reference', info\n"
        "assert 'shapcam._C' in info['error'], info\n"
        "w = np.arange(5.0)\n"
        "r = shapcam.estimate_shapley(lambda m: m @ w, 5, 8)\n"
        "assert r.engine == 'reference' and np.allclose(r.values, w)\n"
        "try:\n"
        "    shapcam.estimate_shapley(lambda m: m @ w, 5, 8, engine='native')\n"
        "except RuntimeError as e:\n"
        "    assert 'not available' in str(e)\n"
        "else:\n"
        "    raise AssertionError('engine=native without the extension must fail')\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_does_not_load_the_extension():
    code = "import sys, shapcam; print('shapcam._C' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_native_matches_build_flags():
    info = shapcam.engine_info()
    if os.environ.get("SHAPCAM_EXPECT_NATIVE") == "1":
        assert info["native"], info["error"]
    if os.environ.get("SHAPCAM_EXPECT_CUDA_BUILT") == "1":
        assert info["cuda_built"]
    if info["native"]:
        from shapcam import _C

        assert _C.num_threads() >= 1
        r = np.empty((3, 4), dtype=np.int32)
        _C.permutations_cpu(1, 0, 3, 4, True, r, None)
        assert sorted(r[0].tolist()) == [0, 1, 2, 3]
