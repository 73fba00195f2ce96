# The two commands users meet first: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck unit bench demo clean venv gramine-build run-provider print-mode

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[server,test,bench]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
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
ARCH_LIBDIR ?= /lib/$(shell $(CC) -dumpmachine)
GRAMINE_DIR := build/gramine
# The simulator's state directory: by default the one `sim init`, `serve --platform sim` and
# `get-key --quote-source sim` use, so the get-key line run-provider prints works as it is.
SIM_STATE ?= $(shell $(PY) -c 'from sealing_key_provider.sim import default_state_dir; print(default_state_dir())')
LOG_LEVEL := $(if $(filter 1,$(DEBUG)),debug,info)
GRAMINE_LOG_LEVEL := $(if $(filter 1,$(DEBUG)),debug,error)
ISVPRODID := $(if $(filter 1,$(DEV_MODE)),1,0)

print-mode:
	@echo "SGX=$(if $(SGX),1 (gramine-sgx),0 (native, simulated platform)) DEV_MODE=$(DEV_MODE) DEBUG=$(DEBUG) ISVPRODID=$(ISVPRODID)"

$(GRAMINE_DIR)/config.toml: gramine/config.toml
	mkdir -p $(GRAMINE_DIR)
	sed -e 's/^dev_mode = false/dev_mode = $(if $(filter 1,$(DEV_MODE)),true,false)/' \
	    -e 's/^level = "info"/level = "$(LOG_LEVEL)"/' $< > $@

gramine-build: $(STAMP) $(GRAMINE_DIR)/config.toml print-mode
	gramine-manifest -Dpython=$(abspath $(PY)) -Dlog_level=$(GRAMINE_LOG_LEVEL) -Darch_libdir=$(ARCH_LIBDIR) \
	    -Dprovider_dir=$(abspath $(GRAMINE_DIR)) -Disvprodid=$(ISVPRODID) -Disvsvn=1 \
	    gramine/sealing-key-provider.manifest.template > $(GRAMINE_DIR)/sealing-key-provider.manifest
	gramine-sgx-sign --manifest $(GRAMINE_DIR)/sealing-key-provider.manifest \
	    --output $(GRAMINE_DIR)/sealing-key-provider.manifest.sgx
	@echo "MRENCLAVE (publish it; TDs pin it):"
	@gramine-sgx-sigstruct-view --output-format json $(GRAMINE_DIR)/sealing-key-provider.sig | grep -i mr_enclave

ifeq ($(SGX),1)
run-provider: gramine-build
	cd $(GRAMINE_DIR) && gramine-sgx sealing-key-provider
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
