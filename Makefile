# The two README commands: `make demo` and `make test`. Both build .venv with pip when it is missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Read by huggingface_hub at import: without it every hub lookup retries for ~50 s offline.
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv test bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -e '.[dev]' 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
	@touch $@

test: venv
	$(PY) -m pytest --durations=15 -q tests

clean:
	rm -rf $(VENV) .pytest_cache
