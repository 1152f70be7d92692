# make demo   — set up .venv (torch, the native extension) and run the demo
# make test   — set up .venv and run the tests
# make bench  — set up .venv and run the benchmarks (writes benchmarks/RESULTS.md)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := torch==2.14.1 torchvision==0.29.1 numpy scipy pybind11 ninja pytest pytest-benchmark hypothesis tqdm \
	pillow scikit-learn grad-cam
BENCH_DEPS := captum shap shapiq

.PHONY: setup build demo test bench bench-tiny clean

$(VENV)/.deps: Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(DEPS)
	touch $@

setup: $(VENV)/.deps build

build: $(VENV)/.deps
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

demo: setup
	$(VENV)/bin/shapcam demo

test: setup
	$(PY) -m pytest -q tests

$(VENV)/.bench-deps: $(VENV)/.deps
	$(PY) -m pip install -q $(BENCH_DEPS)
	touch $@

# Full run: writes benchmarks/results.json and the `make bench` section of benchmarks/RESULTS.md.
bench: setup $(VENV)/.bench-deps
	SHAPCAM_BENCH_WRITE=1 $(PY) -m pytest -q benchmarks --benchmark-json=benchmarks/results.json

# "Does it still run": tiny sizes, nothing written (CI runs this).
bench-tiny: setup $(VENV)/.bench-deps
	SHAPCAM_BENCH_TINY=1 $(PY) -m pytest -q benchmarks --benchmark-disable

clean:
	rm -rf build *.egg-info shapcam/_C*.so
