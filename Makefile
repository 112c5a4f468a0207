# JewelFS — the front door. `make run` and `make test` work on a fresh Debian machine.
# Each area adds its own set-up and test steps in mk/<area>.mk (SETUP_TARGETS, TEST_TARGETS).

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(CURDIR)/target
export AWS_EC2_METADATA_DISABLED := true
CARGO ?= cargo
# One feature set for every build and test, so cargo compiles each crate once.
CARGO_FEATURES := --features backend-lambda/conformance
SETUP_TARGETS :=
TEST_TARGETS :=

-include mk/*.mk

.PHONY: all build release setup setup-debian test test-rust run fmt lint

all: build

## Debian packages everything needs (FUSE, a C toolchain for bundled SQLite).
setup-debian:
	@if ! command -v fusermount3 >/dev/null || ! command -v pkg-config >/dev/null; then \
	  echo "==> installing Debian packages (fuse3, pkg-config)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 pkg-config >/dev/null; \
	fi

setup: setup-debian $(SETUP_TARGETS)

build: setup-debian
	$(CARGO) build --workspace --bins $(CARGO_FEATURES)

release: setup-debian
	$(CARGO) build --release --workspace --bins

## Unit, conformance, API and mount tests, then each area's extra suites.
test: setup build test-rust $(TEST_TARGETS)
	@echo "==> all tests passed"

test-rust:
	$(CARGO) test --workspace $(CARGO_FEATURES) -- --test-threads=4

run: release
	./scripts/run.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
