# NeuralBridge: every target creates .venv (with the tested versions) when missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
FUZZ_CASES ?= 10000

.PHONY: install demo test test-full bench acceptance zoo fuzz clean completions man

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: install
	$(PY) scripts/demo.py

test: install
	$(PY) -m pytest -q -m "not slow" tests

test-full: install
	$(PY) -m pytest -q tests

fuzz: install
	$(PY) scripts/fuzz.py $(FUZZ_CASES)

bench: install
	$(PY) scripts/bench.py

clean:
	rm -rf $(VENV) demo-out zoo-out bench-out acceptance-out .pytest_cache

acceptance: install
	$(PY) scripts/acceptance.py

zoo: install
	$(PY) scripts/zoo.py --jobs 2 --resume --results docs/zoo-results.jsonl

# shell completion scripts and the man page, generated from the app (tests fail when stale)
completions: install
	$(PY) -m neuralbridge_cli.cli.completion completions

man: install
	$(PY) -m neuralbridge_cli.cli.manpage man/neuralbridge.1
