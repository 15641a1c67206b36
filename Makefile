# pairfs build, test and local-cluster targets. See README.md.
#
# Everything here must work on a fresh machine that has only the Rust toolchain: `deps`
# installs what is missing (the rustfmt/clippy components, a C linker) before building.

CARGO ?= cargo
BINS  := bin_nm bin_ss bin_client
# Root test scripts are later work; each runs only if it exists.
ROOT_TESTS := test_replication.sh test_heartbeat.sh

# `make test` runs a short seeded chaos run and the attack replay (pairfs_attack, ~30 s); `make chaos` a longer one (CHAOS_ARGS adds flags,
# e.g. CHAOS_ARGS="--seed 42 --replication async").
CHAOS_TEST_ARGS := --rounds 6 --seed 7
CHAOS_ROUNDS ?= 40
CHAOS_ARGS ?=

# `make test` runs a short fixed range of the deterministic simulation (20 seeds, about 20 s on
# a busy 2-core machine); `make sim` a long one.
SIM_TEST_ARGS := --seeds 4..24 --steps 1500
SIM_ARGS ?= --seeds 1..200 --steps 5000

.PHONY: all build deps test cluster stop bench chaos attack sim clean

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
	target/release/pairfs_sim $(SIM_TEST_ARGS)
	target/release/pairfs_chaos $(CHAOS_TEST_ARGS)
	target/release/pairfs_attack
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

chaos: deps
	$(CARGO) build --release
	target/release/pairfs_chaos --rounds $(CHAOS_ROUNDS) $(CHAOS_ARGS)

# The deterministic whole-cluster simulation (pairfs_sim) over many seeds.
sim: deps
	$(CARGO) build --release
	target/release/pairfs_sim $(SIM_ARGS)

# Hostile socket and input patterns against a local cluster (also part of `make test`).
attack: deps
	$(CARGO) build --release
	target/release/pairfs_attack

clean: stop
	$(CARGO) clean
	rm -f $(BINS)
	rm -rf run
