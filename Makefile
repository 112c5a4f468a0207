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
# Debian packages installed when their part is missing, as PACKAGE=PROBE (see
# scripts/debian-packages.sh). DEBIAN_NEEDS: to build and run (a C compiler for the bundled
# SQLite, fusermount3 for the mount, curl for `make run`). DEBIAN_TEST_NEEDS: for the tests,
# added by each area; `make setup` installs both with one `apt-get update`.
DEBIAN_NEEDS := gcc=cc fuse3=fusermount3 curl=curl
# The unit-file test runs `systemd-analyze verify`; mount_posix watches a folder with
# `inotifywait` (inotify-tools) and acts as another user with `setpriv` (util-linux).
DEBIAN_TEST_NEEDS := systemd=systemd-analyze inotify-tools=inotifywait util-linux=setpriv

-include mk/*.mk

.PHONY: all build release setup setup-debian setup-debian-tests test test-rust run fmt lint

all: build

## The Debian packages to build and run, each only when its part is missing.
setup-debian:
	@scripts/debian-packages.sh $(DEBIAN_NEEDS)

## ... and those the tests need too, at once (one apt-get update).
setup-debian-tests:
	@scripts/debian-packages.sh $(sort $(DEBIAN_NEEDS) $(DEBIAN_TEST_NEEDS))

setup: setup-debian-tests $(SETUP_TARGETS)

build: setup-debian
	$(CARGO) build --workspace --bins $(CARGO_FEATURES)

release: setup-debian
	$(CARGO) build --release --workspace --bins

## Unit, conformance, API and mount tests, then each area's extra suites.
test: setup build test-rust $(TEST_TARGETS)
	@echo "==> all tests passed"

test-rust:
	$(CARGO) test --workspace $(CARGO_FEATURES) -- --test-threads=4

## VERBOSE=1: the server's log (a line per request) on the terminal, not in its log file.
run: release
	JEWEL_VERBOSE=$(VERBOSE) ./scripts/run.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
