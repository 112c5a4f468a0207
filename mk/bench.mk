# make bench: the benchmarks (integration-tests/src/bin/bench.rs) → docs/BENCHMARKS.md and
# docs/bench-*.png. Release build first; progress on stderr. `make bench QUICK=1` runs a
# smaller set (N up to 100, one run, 256 MiB file) in under 5 minutes. Needs root (FUSE,
# drop_caches). Extra flags for the program: BENCH_ARGS="--only sync --runs 5 ...".
# Not part of `make test`.

BENCH_QUICK := $(if $(filter-out 0 no false,$(QUICK)),--quick)

.PHONY: bench bench-link setup-bench

## Debian packages the bench needs: bindfs (the passthrough FUSE baseline, libfuse 2 so
## `-o big_writes` exists) and DejaVu fonts for chart text (drawn by ab_glyph, no fontconfig).
setup-bench:
	@scripts/debian-packages.sh bindfs=bindfs fonts-dejavu-core=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf

bench: setup-debian setup-bench
	@echo "==> release build of the workspace binaries"
	$(CARGO) build --release --workspace --bins
	@echo "==> running the benchmarks$(if $(BENCH_QUICK), (QUICK))"
	$(CARGO_TARGET_DIR)/release/bench $(BENCH_QUICK) --out $(CURDIR)/docs $(BENCH_ARGS)
	$(CARGO_TARGET_DIR)/release/link_bench $(if $(BENCH_QUICK),--n 100 --runs 1) --out $(CURDIR)/docs

## Over a slow link only (a proxy holding every answer back 50 ms): docs/BENCHMARKS-LINK.md.
bench-link: setup-debian
	$(CARGO) build --release --workspace --bins
	$(CARGO_TARGET_DIR)/release/link_bench --out $(CURDIR)/docs $(LINK_ARGS)
