# keras_effv2: `make test` sets up and runs the suite on all three backends;
# `make demo` sets up and runs the main job (EfficientNetV2-B0 on scikit-learn digits).
PYTHON ?= python3
BACKENDS ?= tensorflow jax torch
PYTEST_ARGS ?=
export TF_CPP_MIN_LOG_LEVEL ?= 3
# glibc returns freed heap to the OS eagerly; after the suite frees a large model, every later
# torch CPU allocation faults its pages back in and timm/torch-backend forwards run 30-300x
# slower (measured: a B0 float64 forward 0.2 s -> 46 s). Keep freed memory in the process.
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184

.PHONY: install test test-large demo lint bench

# mmpretrain (the seed's model zoo; tests of the mmpretrain source and export) installs without
# its compiled ops and without letting pip touch torch/numpy: --no-deps, pinned, as issue 21 says.
MMPRETRAIN_PKGS = mmpretrain==1.2.0 mmcv-lite==2.2.0 mmengine==0.10.7 opencv-python-headless \
	addict yapf termcolor modelindex model-index mat4py einops markdown ordered-set
install: .install.stamp
.install.stamp: pyproject.toml
	$(PYTHON) -m pip install -e ".[dev]"
	$(PYTHON) -m pip install --no-deps $(MMPRETRAIN_PKGS)
	$(PYTHON) -m pip install importlib_metadata
	touch $@

# `make test-large`: the whole suite plus the large cases (marker `large`, `--run-large`).
# The legs run in two lanes (tests/run_backends.py; logs in .test-logs/); LANES=1: one by one.
# The torch leg runs as two halves of its test files, one at the end of each lane, so that
# the lanes (TensorFlow then torch 1 | JAX then torch 2) end together.
LANES ?= 2
SPLIT ?= torch:2
test: install
	$(PYTHON) tests/run_backends.py --lanes $(LANES) \
		$(if $(filter $(firstword $(subst :, ,$(SPLIT))),$(BACKENDS)),--split $(SPLIT)) \
		$(BACKENDS) -- $(PYTEST_ARGS)

test-large: PYTEST_ARGS += --run-large
test-large: test

.demo.stamp: pyproject.toml
	$(PYTHON) -m pip install -e ".[tensorflow-cpu,demo]"
	touch $@

demo: .demo.stamp
	KERAS_BACKEND=$${KERAS_BACKEND:-tensorflow} $(PYTHON) -m keras_effv2.train --recipe digits \
		--output runs/demo --no-tensorboard --verbose 2

lint: install
	$(PYTHON) -m ruff check keras_effv2 weights_tools tests bench notebooks

bench: install
	@for b in $(BACKENDS); do KERAS_BACKEND=$$b $(PYTHON) -m bench; done
