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

bench: $(STAMP)
	$(PY) -m bench.run --out bench-results.txt

demo: $(STAMP)
	$(PY) -m sealing_key_provider.demo

# --- Running the provider -------------------------------------------------------------------------
# The original's switches: SGX=1 runs under gramine-sgx on real hardware; DEV_MODE=1 builds a
# development enclave (dev_mode = true is measured, so its MRENCLAVE and keys differ); DEBUG=1 raises
# the log level only (the enclave is never a debug enclave). Without SGX=1 the same target runs the
# provider natively on the simulated platform.
SGX ?=
DEV_MODE ?= 0
DEBUG ?= 0
ARCH_LIBDIR ?= /lib/$(shell $(CC) -dumpmachine)
GRAMINE_DIR := build/gramine
SIM_STATE ?= build/sim-state
LOG_LEVEL := $(if $(filter 1,$(DEBUG)),debug,info)
GRAMINE_LOG_LEVEL := $(if $(filter 1,$(DEBUG)),debug,error)

print-mode:
	@echo "SGX=$(if $(SGX),1 (gramine-sgx),0 (native, simulated platform)) DEV_MODE=$(DEV_MODE) DEBUG=$(DEBUG)"

$(GRAMINE_DIR)/config.toml: gramine/config.toml
	mkdir -p $(GRAMINE_DIR)
	sed -e 's/^dev_mode = false/dev_mode = $(if $(filter 1,$(DEV_MODE)),true,false)/' \
	    -e 's/^level = "info"/level = "$(LOG_LEVEL)"/' $< > $@

gramine-build: $(STAMP) $(GRAMINE_DIR)/config.toml print-mode
	gramine-manifest -Dpython=$(abspath $(PY)) -Dlog_level=$(GRAMINE_LOG_LEVEL) -Darch_libdir=$(ARCH_LIBDIR) \
	    -Dprovider_dir=$(abspath $(GRAMINE_DIR)) -Disvprodid=0 -Disvsvn=1 \
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
