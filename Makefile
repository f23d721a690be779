# Two commands on a fresh machine: `make demo` runs the whole chain on the built-in synthetic
# phantom, `make test` runs the test suite. Both create .venv and install the pinned dependencies.
# `make test-fast` leaves out the tests marked slow (Snakemake runs, mpiexec, kill/resume, long
# training and ageing): a few minutes on 2 cores while developing; `make test` (CI) runs them all.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: install demo test test-fast bench report dryrun lint clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/python -m pip install $(PIP_FLAGS) -r requirements.txt -c requirements.lock
	$(BIN)/python -m pip install $(PIP_FLAGS) --no-deps -e .
	touch $@

demo: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --configfile config.yaml --printshellcmds

report: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --configfile config.yaml --report results/report.html

dryrun: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake -n --configfile config.yaml

lint: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint --configfile config.yaml

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q tests

test-fast: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m "not slow" tests

bench: install
	for b in bench/*.py; do PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python $$b || exit 1; done

clean:
	rm -rf results logs .snakemake
