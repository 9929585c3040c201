# Two commands do all the set-up on a fresh machine:
#   make run    - the main job on embedded defaults (synthetic data, local sandbox, CPU)
#   make test   - the test suite (what .ci/run calls after `make lint`)
#   make test-fast - the tests that run no sandbox job: pytest -m "not sandbox and not docker and not ray and not slow"
#   make lint   - ruff and mypy over every module (mypy through .ci/typecheck.py, which mirrors nncaption.*)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test test-fast lint install clean

# pip runs without -q so that the first install (torch and friends, a few minutes) shows its progress. setuptools
# notes on every editable install that a folder named like the package (nncaption/) is in the working directory;
# here that folder IS the package, so the note is filtered out.
$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "==> creating the virtual environment $(VENV)"; python3 -m venv $(VENV); }
	@echo "==> upgrading pip in $(VENV)"
	@$(PY) -m pip install -q --upgrade pip
	@echo "==> installing nn-caption (editable) with its dependencies and dev tools into $(VENV)"
	PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install -e '.[dev]'
	@touch $(STAMP)
	@echo "==> installed: run the CLI as $(VENV)/bin/nncaption, or 'source $(VENV)/bin/activate' first"

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/nncaption run

# Earlier sessions' pytest temp dirs are removed first: hostile tests leave directory chains deeper than pytest's
# own (recursive) clean-up of old temp dirs can walk, which would end the session with a RecursionError. Job stages
# an interrupted session left mounted there are unmounted first (`nncaption sandbox reap`); what still cannot be
# removed is reported and the tests run anyway.
test: $(STAMP)
	@old="$${TMPDIR:-/tmp}/pytest-of-$$(id -un)"; \
	if [ -d "$$old" ]; then \
	  echo "==> removing earlier test sessions' temp dirs ($$old)"; \
	  $(VENV)/bin/nncaption --log-level error sandbox reap >/dev/null 2>&1 || echo "==> note: sandbox reap failed"; \
	  rm -rf "$$old" || echo "==> note: some of $$old could not be removed; continuing"; \
	fi
	$(PY) -m pytest $(PYTEST_ARGS)

# The fast tier (under 2 minutes on 2 cores): every test except those marked sandbox (runs a sandbox job: smoke,
# train or eval through a backend, a graph run, `nncaption check/eval-model/run`), docker, ray or slow. A test that
# runs a job in-process without the `sandbox` marker fails (tests/conftest.py), so this tier never trains by accident.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not sandbox and not docker and not ray and not slow" $(PYTEST_ARGS)

# Both tools always run, so one report shows everything; the target fails if either found an error.
lint: $(STAMP)
	@echo "==> ruff check"
	@rc=0; $(VENV)/bin/ruff check . || rc=1; \
	echo "==> mypy (every nncaption.* module and the tests)"; \
	$(PY) .ci/typecheck.py || rc=1; \
	exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache
