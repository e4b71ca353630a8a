# The two commands of the README, and the steps they share. Everything installs from this repository's
# own files: a virtualenv from pyproject.toml, and the local control plane's binaries built from the Go
# modules pinned under hack/ (cached under ~/.cache/vibe, so only the first run builds).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# vLLM (for the EPLB policy plugin's tests) pins another torch than the agent: its own virtualenv.
VLLM_VENV ?= .venv-vllm

.PHONY: demo test setup venv cluster-bin lint clean crds

## demo: install, bring the local control plane up and run the end-to-end demo
demo: setup
	$(BIN)/vibe demo

## test: every check, then the whole test suite (what CI runs; CONTRIBUTING.md says what each guards)
test: setup lint
	$(BIN)/pytest

setup: venv cluster-bin

venv: $(VENV)/.installed $(VLLM_VENV)/.installed

# `cluster` brings what the local control plane needs (the demo and the tests run it).
# `bench` brings torch (CPU-capable; about 2.8 GB of wheels from PyPI, ~3 min cold) so that CI runs the
# agent's benchmark code path on a tiny shape, the same code the GPU nodes run.
# `sglang`: the pinned SGLang wheel without its GPU dependencies (the extra lists the few it imports on
# CPU), so the tests run vibe's placement file through SGLang's own loader.
SGLANG_VERSION := $(shell sed -n 's/^SGLANG_VERSION = "\(.*\)"/\1/p' vibe/engines/sglang.py)

$(VENV)/.installed: pyproject.toml vibe/engines/sglang.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,exact,bench,cluster,plot,sglang,podresources,trtllm]'
	$(BIN)/pip install --quiet --no-deps 'sglang==$(SGLANG_VERSION)'
	touch $@

# `vllm`: the vLLM release pinned in hack/vllm-requirements.txt (~9.5 GB, ~4 min cold; CPU is enough) and
# vibe itself without dependencies, so vLLM's plugin loader finds vibe's `vllm.general_plugins` entry
# point; tests/serving/test_serving_vllm_plugin.py runs vLLM's EPLB code path there, in a subprocess.
$(VLLM_VENV)/.installed: hack/vllm-requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet -r hack/vllm-requirements.txt
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

cluster-bin:
	hack/build-cluster.sh

## lint: ruff (lint and format), mypy (types) and import-linter (the layers of ARCHITECTURE.md)
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## crds: copy vibe's CRDs (vibe/crds/manifests, the source) to crds/ and charts/vibe/crds/ (checked copies)
crds:
	rm -f crds/*.yaml charts/vibe/crds/*.yaml
	cp vibe/crds/manifests/*.yaml crds/
	cp vibe/crds/manifests/*.yaml charts/vibe/crds/

clean:
	-$(BIN)/vibe cluster down
	rm -rf $(VENV) $(VLLM_VENV)
