# The web portal's browser tests: Debian's chromium driven by playwright-core (npm, pinned in
# integration-tests/portal/package-lock.json) against a real jewel-server on loopback.
# playwright-core never downloads a browser here: the tests point it at /usr/bin/chromium.

PORTAL_TESTS := integration-tests/portal

.PHONY: setup-portal test-portal

setup-portal:
	@if [ ! -x /usr/bin/chromium ] || ! command -v npm >/dev/null; then \
	  echo "==> installing Debian packages (chromium, nodejs, npm)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium nodejs npm >/dev/null; \
	fi
	@if [ ! -d $(PORTAL_TESTS)/node_modules/playwright-core ]; then \
	  echo "==> npm ci (playwright-core)"; \
	  npm ci --prefix $(PORTAL_TESTS) --no-audit --no-fund; \
	fi

test-portal: setup-portal build
	cd $(PORTAL_TESTS) && node --test --test-concurrency=1 test/

SETUP_TARGETS += setup-portal
TEST_TARGETS += test-portal
