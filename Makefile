# pairfs build, test and local-cluster targets. See README.md.
#
# Everything here must work on a fresh machine that has only the Rust toolchain: `deps`
# installs what is missing (the rustfmt/clippy components, a C linker) before building.

CARGO ?= cargo
BINS  := bin_nm bin_ss bin_client
# Root test scripts are later work; each runs only if it exists.
ROOT_TESTS := test_replication.sh test_heartbeat.sh

.PHONY: all build deps test cluster stop bench clean

all: build

build: deps
	$(CARGO) build --release
	@for b in $(BINS); do cp -f target/release/$$b ./$$b; done
	@echo "built ./bin_nm ./bin_ss ./bin_client (release)"

deps:
	@scripts/deps.sh

test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --release -- -D warnings
	$(CARGO) test --release
	@for t in $(ROOT_TESTS); do \
		if [ -f "$$t" ]; then echo "== $$t"; bash "./$$t" || exit 1; fi; \
	done
	@echo "make test: all passed"

cluster: build
	@scripts/cluster.sh start

stop:
	@scripts/cluster.sh stop

bench: deps
	$(CARGO) build --release
	target/release/pairfs_bench

clean: stop
	$(CARGO) clean
	rm -f $(BINS)
	rm -rf run
