# bundlecopy: copy Porter bundles between OCI registries (CLI + Kubernetes operator).
.PHONY: build demo test test-deps lint crd bench

build:
	cargo build --release --locked

# Two local registries (plain HTTP :5001, TLS :5002), a sample bundle, a copy, an inspect.
demo:
	scripts/demo.sh

# Installs what the tests need (docker-registry, skopeo, helm, kubernetes-validate) when missing,
# then runs the whole suite.
test: test-deps
	@if cargo nextest --version >/dev/null 2>&1; then \
	  cargo nextest run --locked --profile ci; \
	else \
	  cargo test --locked; \
	fi

test-deps:
	scripts/install-test-deps.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

# Regenerate the CRD after changing src/api.rs.
crd:
	cargo run --quiet -- crd > crds/bundlecopies.bundlecopy.dev.yaml

bench:
	bench/run.sh
