# The web portal's browser tests: Debian's chromium driven by playwright-core (npm, pinned in
# integration-tests/portal/package-lock.json) against a real jewel-server on loopback.
# playwright-core never downloads a browser here: the tests point it at /usr/bin/chromium.

PORTAL_TESTS := integration-tests/portal

.PHONY: setup-portal test-portal

# Chromium from Debian; Node.js and npm only when absent (a Node.js from elsewhere, such as
# NodeSource's with its own npm, is used as it is: Debian's npm package conflicts with it).
PORTAL_DEBIAN_NEEDS := chromium=/usr/bin/chromium nodejs=node npm=npm
DEBIAN_TEST_NEEDS += $(PORTAL_DEBIAN_NEEDS)

setup-portal:
	@scripts/debian-packages.sh $(PORTAL_DEBIAN_NEEDS)
	@if [ ! -d $(PORTAL_TESTS)/node_modules/playwright-core ]; then \
	  echo "==> npm ci (playwright-core)"; \
	  npm ci --prefix $(PORTAL_TESTS) --no-audit --no-fund; \
	fi

test-portal: setup-portal build
	cd $(PORTAL_TESTS) && node --test --test-concurrency=1 test/

SETUP_TARGETS += setup-portal
TEST_TARGETS += test-portal
