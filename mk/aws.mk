# AWS mode: the AWS-compatible servers the tests run on loopback, the Terraform checks and the
# Lambda build. Everything installs into the workspace (gitignored), pinned:
#   .venv-emu      moto server 5.2.5 (DynamoDB, S3, SQS, STS)    PyPI
#   .emu-node      dynalite 4.0.0 (strict DynamoDB expressions)   npm
#   .emu-ddb       DynamoDB Local 1.25 (AWS's own DynamoDB,        npm (inside amplify-dynamodb-simulator;
#                  its transaction rules; the 100-user bench)     runs on Debian's OpenJDK 17)
#   .tools         s3s-fs 0.14.1 (S3 that checks SigV4)          crates.io (built once, ~5 min)
#   .venv-checkov  checkov (Terraform policy checks, offline)    PyPI
#   .venv-lambda   cargo-lambda + ziglang (make lambda)           PyPI
# Every AWS SDK call in the tests goes to 127.0.0.1 with static test credentials and
# AWS_EC2_METADATA_DISABLED=true (exported by the Makefile).

EMU_VENV      := $(CURDIR)/.venv-emu
EMU_NODE      := $(CURDIR)/.emu-node
EMU_DDB       := $(CURDIR)/.emu-ddb
DDB_SIMULATOR_VERSION := 2.9.30
CHECKOV_VENV  := $(CURDIR)/.venv-checkov
LAMBDA_VENV   := $(CURDIR)/.venv-lambda
MOTO_VERSION  := 5.2.5
DYNALITE_VERSION := 4.0.0
CHECKOV_VERSION  := 3.3.30

# python3 -m venv needs Debian's python3-venv (ensurepip); dynalite and DynamoDB Local come
# through npm (portal.mk); DynamoDB Local runs on a Java runtime.
AWS_DEBIAN_NEEDS := python3=python3 python3-venv=py:ensurepip nodejs=node npm=npm openjdk-17-jre-headless=java
DEBIAN_TEST_NEEDS += $(AWS_DEBIAN_NEEDS)

SETUP_TARGETS += setup-aws
TEST_TARGETS  += test-aws-infra

.PHONY: setup-aws setup-checkov test-aws test-aws-rust test-aws-infra terraform-check lambda

## moto, dynalite, DynamoDB Local, s3s-fs and cargo-lambda, for the AWS-mode tests (idempotent; fast when already there).
setup-aws:
	@scripts/debian-packages.sh $(AWS_DEBIAN_NEEDS)
	@if ! $(EMU_VENV)/bin/python -c 'import moto, sys; sys.exit(moto.__version__ != "$(MOTO_VERSION)")' 2>/dev/null; then \
	  echo "==> installing moto server $(MOTO_VERSION) into .venv-emu"; \
	  python3 -m venv $(EMU_VENV) && $(EMU_VENV)/bin/pip install -q 'moto[server]==$(MOTO_VERSION)'; \
	fi
	@if [ ! -x $(CURDIR)/.tools/bin/s3s-fs ]; then \
	  echo "==> building s3s-fs 0.14.1 into .tools (once)"; \
	  $(CARGO) install s3s-fs@0.14.1 --features binary --locked --root $(CURDIR)/.tools --quiet; \
	fi
	@if [ ! -x $(LAMBDA_VENV)/bin/cargo-lambda ]; then \
	  echo "==> installing cargo-lambda and ziglang into .venv-lambda"; \
	  python3 -m venv $(LAMBDA_VENV) && $(LAMBDA_VENV)/bin/pip install -q cargo-lambda==1.9.2 ziglang==0.17.0; \
	fi
	@if [ ! -f $(EMU_NODE)/node_modules/dynalite/cli.js ]; then \
	  if command -v npm >/dev/null; then \
	    echo "==> installing dynalite $(DYNALITE_VERSION) into .emu-node"; \
	    npm install --silent --no-audit --no-fund --prefix $(EMU_NODE) dynalite@$(DYNALITE_VERSION); \
	  else echo "!!! npm is missing: the dynalite expression tests will be skipped"; fi; \
	fi
	@if [ ! -f $(EMU_DDB)/node_modules/amplify-dynamodb-simulator/emulator/DynamoDBLocal.jar ]; then \
	  if command -v npm >/dev/null; then \
	    echo "==> installing DynamoDB Local (amplify-dynamodb-simulator $(DDB_SIMULATOR_VERSION)) into .emu-ddb"; \
	    npm install --silent --no-audit --no-fund --prefix $(EMU_DDB) amplify-dynamodb-simulator@$(DDB_SIMULATOR_VERSION); \
	  else echo "!!! npm is missing: the DynamoDB Local tests will be skipped"; fi; \
	fi

setup-checkov:
	@scripts/debian-packages.sh $(AWS_DEBIAN_NEEDS)
	@if [ ! -x $(CHECKOV_VENV)/bin/checkov ]; then \
	  echo "==> installing checkov into .venv-checkov"; \
	  python3 -m venv $(CHECKOV_VENV) && $(CHECKOV_VENV)/bin/pip install -q 'checkov==$(CHECKOV_VERSION)'; \
	fi

## Every AWS-mode test: the conformance suites on moto, dynalite and DynamoDB Local, the server end to end,
## and the Terraform checks.
test-aws: setup-aws test-aws-rust test-aws-infra

test-aws-rust: setup-aws
	$(CARGO) test -p backend-lambda --features aws,conformance --lib aws
	$(CARGO) test -p backend-lambda --features aws,conformance --test aws_server --test aws_lambda --test aws_terraform --test aws_cost
	$(CARGO) build --workspace --bins $(CARGO_FEATURES)
	$(CARGO) test --workspace $(CARGO_FEATURES) --test aws_mounts

## Terraform: formatting (when terraform is installed) and checkov's policies, offline.
test-aws-infra: setup-checkov terraform-check

terraform-check:
	@if command -v terraform >/dev/null; then \
	  echo "==> terraform fmt -check"; terraform fmt -check -recursive terraform; \
	else echo "!!! terraform is not installed: skipping terraform fmt -check"; fi
	@echo "==> checkov (offline)"
	@$(CHECKOV_VENV)/bin/checkov -d terraform --skip-download --quiet --compact --framework terraform

## The Lambda package: target/lambda-build/lambda/bootstrap/bootstrap.zip (release, glibc-compatible with
## Lambda's provided.al2023 through zig). x86-64 by default; LAMBDA_ARCH=arm64 (Graviton, 20%
## cheaper per GB-second) needs `rustup target add aarch64-unknown-linux-gnu` first, and
## `-var lambda_architecture=arm64` in terraform.
## It builds in its own target folder, so a long release build never holds the lock of the
## one the tests use.
LAMBDA_ARCH ?= x86-64
LAMBDA_TARGET := $(CURDIR)/target/lambda-build
lambda: setup-aws
	PATH=$(LAMBDA_VENV)/bin:$$PATH CARGO_TARGET_DIR=$(LAMBDA_TARGET) $(CARGO) lambda build --release --$(LAMBDA_ARCH) --bin bootstrap -p backend-lambda --output-format zip
	@ls -l $(LAMBDA_TARGET)/lambda/bootstrap/bootstrap.zip
