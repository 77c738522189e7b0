# Two commands for a fresh machine: `make demo` runs the embedded default sweep, `make test` runs the tests.
# `make lint` runs ruff (configured in pyproject.toml) over the package, the tests and the benches.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned to the CPU build here; GPU nodes install the `vllm` extra, which pins its own torch.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo lint test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]" "$(TORCH)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/alphasweep sweep

lint: $(STAMP)
	$(BIN)/ruff check alphasweep tests bench

test: $(STAMP)
	bash tests/services.sh
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) runs .pytest_cache
