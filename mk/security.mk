# Security and robustness: API fuzzing, the load test, long soaks. Installs into the
# workspace (gitignored), pinned:
#   .venv-fuzz   schemathesis 4.32.5 (PyPI)
# The hostile-input, fault and convergence tests are Rust integration tests that `make test`
# runs with the rest (integration-tests/tests/{hostile,faults,convergence}_*.rs).

FUZZ_VENV            := $(CURDIR)/.venv-fuzz
SCHEMATHESIS_VERSION := 4.32.5
# The load run: devices, seconds (make soak LOAD_SECONDS=60 for a shorter one).
LOAD_DEVICES ?= 1000
LOAD_SECONDS ?= 300
# The long convergence run: rounds of random operations per seed, and how many seeds.
SOAK_SEEDS   ?= 20
# Seeds of the intent test (two mounts, outages, a crash) and of the core's model test.
INTENT_SEEDS ?= 200
MODEL_SEEDS  ?= 1000
# Seeds of the core's model test with three devices (crashes too; a seed takes longer).
MODEL3_SEEDS ?= 300

DEBIAN_TEST_NEEDS += python3=python3 python3-venv=py:ensurepip

SETUP_TARGETS += setup-fuzz
TEST_TARGETS  += test-fuzz

.PHONY: setup-fuzz test-fuzz soak load

## schemathesis in .venv-fuzz (idempotent; fast when already there).
setup-fuzz:
	@scripts/debian-packages.sh python3=python3 python3-venv=py:ensurepip
	@if ! $(FUZZ_VENV)/bin/schemathesis --version 2>/dev/null | grep -q '$(SCHEMATHESIS_VERSION)'; then \
	  echo "==> installing schemathesis $(SCHEMATHESIS_VERSION) into .venv-fuzz"; \
	  python3 -m venv $(FUZZ_VENV) && $(FUZZ_VENV)/bin/pip install -q 'schemathesis==$(SCHEMATHESIS_VERSION)'; \
	fi

## The API fuzzer against a real jewel-server: no 5xx, answers as documented (~2 min).
test-fuzz: setup-fuzz build
	integration-tests/fuzz/run.sh

## 1000 devices long-polling and committing against a release jewel-server; numbers to stdout
## (docs/LOAD.md keeps the last ones).
load:
	$(CARGO) build --release -p backend-lambda --bin jewel-server -p integration-tests --bin load
	$(CARGO_TARGET_DIR)/release/load --devices $(LOAD_DEVICES) --seconds $(LOAD_SECONDS)

## Long runs: the load test for 5 minutes, the convergence test over many random seeds with
## client and server outages (and the seeds known to fail), a long fuzz.
soak: build load
	JEWEL_SOAK_SEEDS=$(SOAK_SEEDS) $(CARGO) test -p integration-tests --test convergence -- --include-ignored --nocapture
	JEWEL_INTENT_CASES=$(INTENT_SEEDS) $(CARGO) test -p integration-tests --test mount_intent -- --include-ignored --nocapture
	JEWEL_MODEL_CASES=$(MODEL_SEEDS) JEWEL_MODEL_OPS=80 $(CARGO) test -p integration-tests --test core_model core_matches_model -- --nocapture
	JEWEL_MODEL_CASES=$(MODEL3_SEEDS) JEWEL_MODEL_OPS=80 $(CARGO) test -p integration-tests --test core_model core_model_on_three_devices -- --nocapture
	JEWEL_FUZZ_EXAMPLES=200 JEWEL_FUZZ_TIME=900 $(MAKE) test-fuzz
