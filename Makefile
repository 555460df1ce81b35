# balena-multi-container-telemetry
#   make build   release binary for this machine (target/release/)
#   make test    every test: unit, integration against a real mosquitto (installed when missing), the
#                real Docker Engine, qemu for the Arm builds; builds every device binary first
#   make test-unit  the unit tests alone (no broker, no engine, no device builds): a minute or two
#   make demo    the agent once on the example configs and a sample stats file, against a throwaway broker
#   make demo-engine  the agent once in ENGINE mode on this machine's Docker engine, against a throwaway
#                broker (needs access to the engine's socket: root or the docker group)
#   make lint    cargo fmt --check and clippy with warnings as errors
#   make clean
#   make fuzz    the fuzzers for FUZZ_CASES cases each (default 1,000,000)
#   make check-ha every Home Assistant discovery config checked with Home Assistant 2024.3.3's own schemas
#                (installs it into target/ha-venv the first time: ~400 MB, minutes; not part of make test)
#   make check-ha-device  the device form of discovery, and the migration to it, checked with Home
#                Assistant 2025.4.4's own code (pyenv's Python 3.13; installs it into target/ha-venv-2025
#                the first time: ~800 MB, minutes; not part of make test); prints both forms' bytes
#   make check-ha-live  the agent against a running Home Assistant 2025.4.4 (same venv, plus paho-mqtt):
#                values heard after discovery, its subscription delay, the migration keeping every entity
#   make aarch64 / armv7 / armv6 / x86_64
#                static musl binary in target/device/<triple>/release/ (rust-lld; clang for ring)
#   make dist    the four static binaries, copied to dist/arm64, dist/arm/v7, dist/arm/v6, dist/amd64
#                (Docker's platform names, TARGETARCH/TARGETVARIANT), and this machine's also to dist/host
#   make host    only this machine's static binary, in dist/host/ (what docker-compose.local.yaml builds)
#   make dist-notls   aarch64 without the tls feature, in dist/notls/
#   make size    their sizes (and the build without TLS) against the budgets (make test fails when one is over)
#   make image   the FROM scratch image for PLATFORM (default linux/arm64; linux/arm/v7, linux/arm/v6,
#                linux/amd64), tagged $(IMAGE):<platform> (arm64, arm-v7, arm-v6, amd64)

CARGO ?= cargo
BIN := balena-multi-container-telemetry

.PHONY: all build test test-unit demo demo-engine lint clean deps check-ha check-ha-device check-ha-live aarch64 armv7 armv6 x86_64 dist \
	host dist-notls size size-check image

STATIC := sh cross-compile/static.sh
PLATFORM ?= linux/arm64
IMAGE ?= balena-multi-container-telemetry

all: build

build:
	$(CARGO) build --release

deps:
	@sh tests/scripts/ensure-deps.sh

# dist first: tests/static_build.rs runs those binaries (under qemu for Arm) and the scratch image. The
# build without TLS is checked for aarch64 only (it is the one with a budget of its own in the issue).
# ensure-deps.sh test: also rabbitmq-server, for tests/cluster.rs.
test: deps dist
	@sh tests/scripts/ensure-deps.sh test
	@CARGO="$(CARGO)" TLS=off $(STATIC) dist aarch64
	$(CARGO) test --release --no-fail-fast -- --test-threads=2
	@$(STATIC) check
	@TLS=off $(STATIC) check aarch64

test-unit:
	$(CARGO) test --release --bins

demo: deps build
	@sh tests/scripts/demo.sh

demo-engine: deps build
	@sh tests/scripts/demo.sh engine

check-ha: deps
	python3 tests/scripts/check-ha-schemas.py

check-ha-device: deps
	python3 tests/scripts/check-ha-device.py

check-ha-live: deps
	python3 tests/scripts/check-ha-live.py

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf dist

aarch64 armv7 armv6 x86_64:
	@CARGO="$(CARGO)" $(STATIC) build $@

dist:
	@CARGO="$(CARGO)" $(STATIC) dist

host:
	@CARGO="$(CARGO)" $(STATIC) host

dist-notls:
	@CARGO="$(CARGO)" TLS=off $(STATIC) dist

size: dist dist-notls
	@$(STATIC) size
	@TLS=off $(STATIC) size

size-check: dist dist-notls
	@$(STATIC) check
	@TLS=off $(STATIC) check

image:
	@CARGO="$(CARGO)" $(STATIC) image "$(PLATFORM)" "$(IMAGE)"

# make bench: binary sizes, FILE-mode CPU/RSS per tick at 8 / 1,000 / 10,000 containers, --once publishing
# against mosquitto_pub, CLI and ENGINE mode on real containers (issue 6), a burst of 90,000 QoS 1 messages
# against rumqttc through a stock mosquitto and one with set_tcp_nodelay (issue 18), disk bytes per hour of
# outage and RSS with and without the spool (issue 21), and the CPU per cycle of
# agent + engine for ENGINE's kernel figures, its API figures and the CLI route (issue 12). Report in
# target/bench/. rumqttc is a project of its own (tests/bench/rumqttc-qos1, its own lock file and target/).
# make bench-spool: only issue 21's outage with and without the spool (about 3 minutes), on the release build.
# make bench-qos1: only issue 18's burst (about a minute), on the release build of `make build`.
# make bench-kernel: only issue 12's (about 10 minutes), on the shipped x86_64 binary; a quick look:
#   make bench-kernel BENCH_KERNEL_ARGS="--cycles 3 --scale-cycles 2 --counts 10,40"
# make bench-bytes: only issue 19's bytes per device per day (about 2.5 minutes, every row at once), on the
# release build; a quick look with fewer rows (plain only, at rest): make bench-bytes BENCH_BYTES_ARGS=--quick
# make bench-fleet: only issue 20's simulated fleet (about 8 minutes): 500 agents (this machine's static
# binary, make host) against one mosquitto restarted after 20 s down, and against a 3-node RabbitMQ cluster
# with one node killed, then all of it stopped and started again; a quick look with 100 agents: make
# bench-fleet BENCH_FLEET_ARGS=--quick
.PHONY: bench bench-qos1 bench-kernel bench-bytes bench-spool bench-fleet
BENCH_KERNEL_ARGS ?=
BENCH_BYTES_ARGS ?=
BENCH_FLEET_ARGS ?=
bench: build dist
	@sh tests/scripts/ensure-deps.sh bench
	@CARGO="$(CARGO)" python3 tests/bench/bench.py

bench-qos1: build
	@sh tests/scripts/ensure-deps.sh bench
	@CARGO="$(CARGO)" python3 tests/bench/qos1.py

bench-bytes: build
	@sh tests/scripts/ensure-deps.sh bench
	@python3 tests/bench/bytes.py $(BENCH_BYTES_ARGS)

bench-spool: build
	@sh tests/scripts/ensure-deps.sh bench
	@python3 tests/bench/spool.py

bench-kernel: x86_64
	@sh tests/scripts/ensure-deps.sh bench
	@python3 tests/bench/kernel_figures.py $(BENCH_KERNEL_ARGS) \
		"$${CARGO_TARGET_DIR:-target}/device/x86_64-unknown-linux-musl/release/$(BIN)"

bench-fleet: host
	@sh tests/scripts/ensure-deps.sh bench
	@python3 tests/bench/fleet.py $(BENCH_FLEET_ARGS)

# make fuzz: the deterministic fuzzers of src/fuzz.rs (docker stats and ps text, the kernel's cgroup and proc files,
# the engine's HTTP answers and event stream, the broker's bytes), FUZZ_CASES each
# (default 1,000,000); make test runs them for 20,000 and 50,000 cases.
.PHONY: fuzz
FUZZ_CASES ?= 1000000
fuzz:
	FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release fuzz_ -- --test-threads=2 --nocapture
