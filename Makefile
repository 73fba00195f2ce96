# The two commands users meet first: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck unit bench demo clean venv run-provider print-mode fuzz loadtest

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[server,test,bench]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench enclave
	$(VENV)/bin/ruff format --check src tests bench enclave
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest

test: lint typecheck unit

# The TD side as a TD installs it (`pip install .`, no extras): the command start-up figures are
# measured there, as get-key runs in a TD.
TD_VENV := build/td-venv
TD_STAMP := $(TD_VENV)/.installed
$(TD_STAMP): pyproject.toml constraints.txt $(shell find src -name '*.py' -o -name '*.pem')
	test -x $(TD_VENV)/bin/python || $(PYTHON) -m venv $(TD_VENV)
	$(TD_VENV)/bin/python -m pip install -q -c constraints.txt .
	$(TD_VENV)/bin/python -m pip install -q --force-reinstall --no-deps .
	touch $@

bench: $(STAMP) $(TD_STAMP)
	$(PY) -m bench.run --out bench-results.txt --td-venv $(TD_VENV)

# Fuzz every parser an attacker feeds (quote, PCK extension, collateral, legacy frames, HTTP bodies)
# for FUZZ_SECONDS in all; `make test` runs a short bounded pass of the same harnesses.
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	$(PY) -m tests.fuzz.run --seconds $(FUZZ_SECONDS)

# The reliability scenarios (steady load, hostile neighbour, mass boot through one relay, hanging and
# refusing PCCS, log volume) against the simulated platform, on loopback only; prints the table.
loadtest: $(STAMP)
	$(PY) -m bench.loadtest

demo: $(STAMP)
	$(PY) -m sealing_key_provider.demo

# --- Running the provider -------------------------------------------------------------------------
# The original's switches: SGX=1 runs under gramine-sgx on real hardware; DEV_MODE=1 builds a
# development enclave (dev_mode = true is measured, so its MRENCLAVE and keys differ); DEBUG=1 raises
# the log level only (the enclave is never a debug enclave). Without SGX=1 the same target runs the
# provider natively on the simulated platform. A DEV_MODE=1 build gets its own ISVPRODID (1; production
# is 0), so even signed with the production key it never shares the MRSIGNER sealing key.
SGX ?=
DEV_MODE ?= 0
DEBUG ?= 0
GRAMINE_DIR := build/gramine
# The simulator's state directory: by default the one `sim init`, `serve --platform sim` and
# `get-key --quote-source sim` use, so the get-key line run-provider prints works as it is.
SIM_STATE ?= $(shell $(PY) -c 'from sealing_key_provider.sim import default_state_dir; print(default_state_dir())')
LOG_LEVEL := $(if $(filter 1,$(DEBUG)),debug,info)
GRAMINE_LOG_LEVEL := $(if $(filter 1,$(DEBUG)),debug,error)

print-mode:
	@echo "SGX=$(if $(SGX),1 (gramine-sgx),0 (native, simulated platform)) DEV_MODE=$(DEV_MODE) DEBUG=$(DEBUG) ISVPRODID=$(ISVPRODID)"

# The measured configuration: gramine/config.toml, or another file (ENCLAVE_CONFIG=, e.g. the container
# image's deploy/config-container.toml); either way it is in the enclave tree and in MRENCLAVE.
ENCLAVE_CONFIG ?= gramine/config.toml

$(GRAMINE_DIR)/config.toml: $(ENCLAVE_CONFIG) FORCE
	mkdir -p $(GRAMINE_DIR)
	sed -e 's/^dev_mode = false/dev_mode = $(if $(filter 1,$(DEV_MODE)),true,false)/' \
	    -e 's/^level = "info"/level = "$(LOG_LEVEL)"/' $< > $@.tmp
	cmp -s $@.tmp $@ && rm $@.tmp || mv $@.tmp $@

# --- The enclave (docs/deploy.md) ------------------------------------------------------------------
# lock:         gramine/requirements.lock, every runtime dependency with its hashes (checked in).
# enclave-tree: interpreter, stdlib, libraries, locked dependencies and this project's wheel at PREFIX.
# manifest:     build/sealing-key-provider.manifest (gramine-manifest if installed, else enclave/render.py).
# measure:      build/enclave-measurement.txt, the measurement preview (and MRENCLAVE with Gramine).
# dry-run:      the production enclave in its exact file view, without SGX, answering both protocols.
PREFIX ?= /opt/sealing-key-provider
ENCLAVE_PYTHON ?= $(shell $(PY) -c 'import sys; print(sys._base_executable)' 2>/dev/null || command -v python3)
# Extras of this project whose dependencies the enclave needs (the server's web stack).
ENCLAVE_EXTRAS ?= server
PCCS_CA ?=
# A DEV_MODE=1 build gets its own ISVPRODID (1; production is 0), so even signed with the production key
# it never shares the MRSIGNER sealing key. Both are SIGSTRUCT fields, measured into the manifest too.
ISVPRODID ?= $(if $(filter 1,$(DEV_MODE)),1,0)
ISVSVN ?= 1
GRAMINE_PKGLIBDIR ?= /usr/lib/x86_64-linux-gnu/gramine
SGX_SIGNING_KEY ?= $(HOME)/.config/gramine/enclave-key.pem
MANIFEST := build/sealing-key-provider.manifest
WHEELHOUSE ?= build/wheelhouse
HAVE_GRAMINE := $(shell command -v gramine-manifest >/dev/null 2>&1 && echo 1)
MANIFEST_VARS := -Dprefix=$(PREFIX) -Dlog_level=$(GRAMINE_LOG_LEVEL) -Disvprodid=$(ISVPRODID) -Disvsvn=$(ISVSVN)

.PHONY: lock enclave-wheel enclave-tree manifest measure dry-run FORCE
FORCE:

lock: $(STAMP)
	$(PY) -m enclave.lock --constraints constraints.txt $(if $(ENCLAVE_EXTRAS),--extras $(ENCLAVE_EXTRAS)) \
	    --out gramine/requirements.lock

enclave-wheel: $(STAMP)
	$(PY) -m enclave.tree wheel --source . --out build/dist --constraints constraints.txt

enclave-tree: $(STAMP) enclave-wheel $(GRAMINE_DIR)/config.toml
	$(PY) -m enclave.tree install --prefix $(PREFIX) --python $(ENCLAVE_PYTHON) --lock gramine/requirements.lock \
	    --wheel-dir build/dist --config $(GRAMINE_DIR)/config.toml --hosts gramine/hosts \
	    --nsswitch gramine/nsswitch.conf --wheelhouse $(WHEELHOUSE) $(if $(PCCS_CA),--pccs-ca $(PCCS_CA))

manifest: enclave-tree print-mode
ifeq ($(HAVE_GRAMINE),1)
	gramine-manifest $(MANIFEST_VARS) gramine/sealing-key-provider.manifest.template $(MANIFEST)
else
	$(PY) -m enclave.render --pkglibdir $(GRAMINE_PKGLIBDIR) $(MANIFEST_VARS) \
	    gramine/sealing-key-provider.manifest.template $(MANIFEST)
endif

measure: $(STAMP)
	$(PY) -m enclave.measure $(MANIFEST) build/enclave-measurement.txt
ifeq ($(HAVE_GRAMINE),1)
	gramine-sgx-sign --key $(SGX_SIGNING_KEY) --date 0000-00-00 --manifest $(MANIFEST) --output $(MANIFEST).sgx
	@echo "MRENCLAVE (publish it; TDs pin it):"
	@gramine-sgx-sigstruct-view --output-format json build/sealing-key-provider.sig | grep -i mr_enclave
else
	@echo "Gramine is not installed: no MRENCLAVE here (the preview digest above fixes everything but Gramine's own code)"
endif

dry-run: $(STAMP)
	$(PY) -m enclave.dryrun --manifest $(MANIFEST) --preview build/enclave-measurement.txt \
	    --template gramine/sealing-key-provider.manifest.template --pkglibdir $(GRAMINE_PKGLIBDIR) --work build/dry-run

ifeq ($(SGX),1)
run-provider: manifest measure
	cd build && gramine-sgx sealing-key-provider
else
run-provider: $(STAMP) print-mode
	$(VENV)/bin/sealing-key-provider sim init --state-dir $(SIM_STATE)
	$(VENV)/bin/sealing-key-provider sim pccs --state-dir $(SIM_STATE) --listen 127.0.0.1:8081 & \
	pccs=$$!; trap 'kill $$pccs' EXIT INT TERM; \
	$(VENV)/bin/sealing-key-provider serve --platform sim --state-dir $(SIM_STATE) \
	    --pccs-url http://127.0.0.1:8081 --trust-anchor $(SIM_STATE)/root-ca.pem --log-level $(LOG_LEVEL) \
	    $(if $(filter 1,$(DEV_MODE)),--dev-mode,)
endif

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
