# Berth: the two commands a user needs are `make run` and `make test`.
# Every target installs what it needs first (scripts/install-deps.sh is idempotent).

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all deps build image bundle run run-host test bench clean fmt lint

all: build

deps:
	./scripts/install-deps.sh

# Static release binaries of the workspace into out/bin.
build: deps
	./scripts/build.sh

# The bootable disk image and its conversions into out/. `make image PROFILE=node`: the
# Kubernetes node variant (containerd as a system extension) into out/node/.
image: build
	./scripts/build-image.sh

# A signed update bundle of that image, out/berth.bundle (scripts/build-bundle.sh).
bundle: image
	./scripts/build-bundle.sh

# Build what is missing and boot Berth with the demo container.
run: deps
	./scripts/run.sh

# The supervisor on this machine (host mode, no VM) with the example units.
run-host: deps
	./scripts/run-host.sh

# Formatting, lints, unit, host integration and QEMU tests.
test: deps
	./scripts/test.sh

bench: build
	./bench/run.sh

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

clean:
	cargo clean
	rm -rf out
