# The README's two commands: `make book` and `make test`.
# Each creates .venv and installs the pinned environment on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ELR    := $(VENV)/bin/elr
STAMP  := $(VENV)/.installed-stamp
PROFILE ?= quick
# base seed of every chapter that declares `seed` (empty: each chapter's default, 0). CI sets one derived from
# the commit, so every landing tests a new draw as a reader's machine would (.ci/run).
SEED ?=
# training processes per sweep inside a chapter (one torch thread each); 1 = one process with all threads.
# Claims are statistics over seeds and do not depend on bit-for-bit repetition, so the book uses the faster
# pool of two (measured on the reproducibility page); `make robust` also builds with 1 and with one thread.
ELR_WORKERS ?= 2
# chapters of `make robust` (default: all); e.g. make robust ROBUST_ONLY="10 11 12 13"
ROBUST_ONLY ?=

.PHONY: install book robust test test-zoo prove bench clean

install: $(STAMP)

# the book's exact environment: pyproject.toml's lower bounds, pinned by constraints.txt. torch==2.14.1 /
# torchvision==0.29.1 come from this machine's local wheel cache through pip's own configuration; everything
# else from PyPI.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

book: $(STAMP)
	ELR_WORKERS=$(ELR_WORKERS) $(ELR) book --profile $(PROFILE) $(if $(SEED),-p seed=$(SEED),)

# the book again in three variants, each at a base seed that set no expectation: seed 2000 (pool of two), one
# process (seed 3000), one torch thread (seed 4000); book/robustness.md records them
robust: $(STAMP)
	$(ELR) robust $(if $(ROBUST_ONLY),--only $(ROBUST_ONLY),)

test: $(STAMP)
	$(PY) -m pytest

# the audit of every torchvision classification model at random initialisation: two shards in parallel, one
# thread each, balanced by tests/zoo_seconds.json (499 s on two idle cores, 2026-12-03; Swin-V2-B, RegNetY-128GF and
# Swin-V2-S are the slowest); exits non-zero if either shard fails
test-zoo: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m zoo tests/test_zoo.py --shard 0/2 & shard=$$!; \
	OMP_NUM_THREADS=1 $(PY) -m pytest -m zoo tests/test_zoo.py --shard 1/2; rc=$$?; \
	wait $$shard && exit $$rc

prove: $(STAMP)
	$(ELR) prove

bench: $(STAMP)
	$(PY) benchmarks/bench.py

clean:
	rm -rf _build book/chapters
