# Everything a fresh machine needs: `make test` bootstraps .venv, builds detector._C and runs the tests.
PYTHON_SYS ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.requirements-installed
EDITABLE_STAMP := $(VENV)/.detector-editable
OP_SOURCES := $(shell find ops -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
BUILD_STAMP := build/.ops-built
CUDA_STAMP := build/.cuda-compiled
VENV_SITE = $(VENV)/lib/python3.11/site-packages
PYTEST_ARGS ?=

.PHONY: venv build test test-fast cuda-check bench lint clean

venv: $(VENV_STAMP)

$(VENV_STAMP): requirements.txt
	@command -v $(PYTHON_SYS) >/dev/null || { echo "make: $(PYTHON_SYS) not found; set PYTHON_SYS=/path/to/python3.11"; exit 1; }
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# The checkout on the venv's import path (what `pip install -e .` gives, without pip building
# every kernel a first time in its own temporary folder; the in-place build below compiles once).
$(EDITABLE_STAMP): $(VENV_STAMP)
	echo "$(CURDIR)" > $(VENV_SITE)/detector-checkout.pth
	touch $@

# Incremental rebuild of detector._C (ninja recompiles only what changed).
$(BUILD_STAMP): $(EDITABLE_STAMP) $(OP_SOURCES)
	MAX_JOBS=2 $(PY) setup.py -q build_ext --inplace
	mkdir -p build && touch $@

build: $(BUILD_STAMP)

# Compiles the CUDA kernels on a machine without a GPU (catches compile errors; docs/design.md, Build).
$(CUDA_STAMP): $(VENV_STAMP) $(OP_SOURCES)
	FORCE_CUDA=1 CUDA_HOME=$${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} \
	CPATH=$(abspath $(VENV_SITE))/nvidia/cu13/include MAX_JOBS=2 \
	$(PY) setup.py -q build_ext --build-temp build/cuda-temp --build-lib build/cuda-lib
	mkdir -p build && touch $@

cuda-check: $(CUDA_STAMP)

test: build
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The README's main job: train Mask R-CNN on the built-in shapes on the CPU, evaluate box/mask AP
# on shapes_val, export the weights, draw predictions (tools/run_main_job.py; 3 to 8 min on 2
# cores, README).
# On a machine busy with other jobs, TRAIN_ARGS="--num-threads 1" is faster.
TRAIN_CONFIG ?= configs/shapes/mask_rcnn_R_18_FPN_shapes.yaml
TRAIN_OUTPUT ?= output/shapes/mask_rcnn_R_18_FPN
TRAIN_ARGS ?=
.PHONY: train
train: build
	PYTHONPATH=$(CURDIR) $(PY) tools/run_main_job.py --config-file $(TRAIN_CONFIG) \
		--output-dir $(TRAIN_OUTPUT) $(TRAIN_ARGS)

bench: build
	$(PY) benchmarks/ops.py

# ruff (lint and format), pyright in strict mode ([tool.pyright] in pyproject.toml) and
# clang-format (.clang-format) on the C++ / CUDA sources.
lint: venv
	$(PY) -m ruff check detector tests benchmarks tools
	$(PY) -m ruff format --check detector tests benchmarks tools
	$(VENV)/bin/pyright --pythonpath $(PY)
	$(VENV)/bin/clang-format --dry-run --Werror $(OP_SOURCES)

clean:
	rm -rf build detector/*.so
