VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run variants test test-keras-floor test-slow lint

# One-time set-up: a virtual environment with the package and its test extras.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test,train,timm,serving,plot,export,jax]"
	touch $@

# The main job: train a small CoAtNet on scikit-learn's digits, report held-out accuracy.
run: setup
	$(PY) examples/train.py --output-dir runs/digits

# Build every CoAtNet variant and print params / MACs.
variants: setup
	$(PY) examples/variants.py

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The test suite: lint, every test on TensorFlow, the layer, cache, two timm-parity and one
# size-free parity test on JAX.
# Two pytest-xdist workers, whole files per worker (module fixtures are built once):
# most of the time goes to subprocesses starting up and tracing, which overlap.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile --durations=15

test: lint
	$(PYTEST)
	KERAS_BACKEND=jax $(PYTEST) tests/test_layers.py tests/test_bias_cache.py \
		tests/test_fast_paths.py tests/test_model.py -k "not parameter_count and not macs and not 384 and not 224"
	KERAS_BACKEND=jax $(PY) -m pytest -q tests/test_timm.py tests/test_size_free.py \
		-k "converted_model_matches_timm and (coatnet_0_rw_224 or coatnet_rmlp_1_rw_224) \
		or equals_fixed and coatnet_0_rw_224 and 256x320"
	$(MAKE) --no-print-directory test-keras-floor

# The oldest Keras pyproject.toml allows (keep the two equal; a test checks), on
# TensorFlow: the private APIs of _keras_compat, the layers, saving and loading,
# seeded augmentation. Installed without dependencies into its own folder, put
# ahead of .venv's Keras by PYTHONPATH; everything else comes from .venv.
KERAS_FLOOR := 3.11.0
KERAS_FLOOR_DIR := .venv-keras-floor

$(KERAS_FLOOR_DIR)/.keras-$(KERAS_FLOOR): $(VENV)/.installed
	rm -rf $(KERAS_FLOOR_DIR)
	$(PY) -m pip install -q --no-deps --target $(KERAS_FLOOR_DIR) keras==$(KERAS_FLOOR)
	touch $@

test-keras-floor: setup $(KERAS_FLOOR_DIR)/.keras-$(KERAS_FLOOR)
	PYTHONPATH=$(KERAS_FLOOR_DIR) $(PY) -c \
		"import keras; assert keras.__version__ == '$(KERAS_FLOOR)', keras.__version__"
	PYTHONPATH=$(KERAS_FLOOR_DIR) $(PYTEST) tests/test_keras_compat.py tests/test_layers.py \
		tests/test_model.py tests/test_training.py -k "test_keras_compat or test_layers or \
		round_trip or rejected or resized_tables or model_saves_and_reloads or \
		augmented_epochs_replay or fine_tuning_start"

# CoAtNet-6/7 builds (billions of parameters, ~2 min, 6 GiB).
test-slow: setup
	$(PY) -m pytest -q -m slow
