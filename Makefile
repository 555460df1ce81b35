# balena-multi-container-telemetry
#   make build   release binary for this machine (target/release/)
#   make test    every test: unit, integration against a real mosquitto (installed when missing)
#   make demo    the agent once on the example configs and a sample stats file, against a throwaway broker
#   make lint    cargo fmt --check and clippy with warnings as errors
#   make clean

CARGO ?= cargo
BIN := balena-multi-container-telemetry

.PHONY: all build test demo lint clean deps

all: build

build:
	$(CARGO) build --release

deps:
	@sh tests/scripts/ensure-deps.sh

test: deps
	$(CARGO) test --release -- --test-threads=2

demo: deps build
	@sh tests/scripts/demo.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf dist
