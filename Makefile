# bundlecopy: copy Porter bundles between OCI registries (CLI + Kubernetes operator).
.PHONY: build demo test test-deps lint crd bench

build:
	cargo build --release --locked

# Two local registries (plain HTTP :5001, TLS :5002), a sample bundle, a copy, an inspect.
demo:
	scripts/demo.sh

# Installs what the tests need (docker-registry, skopeo, squid, helm, kubernetes-validate) when missing,
# then runs the whole suite. The e2e tests that need a cluster run only with KUBECONFIG set;
# without it nextest reports them as skipped (.config/nextest.toml).
test: test-deps
	@if cargo nextest --version >/dev/null 2>&1; then \
	  cargo nextest run --locked --profile $(if $(KUBECONFIG),ci-cluster,ci); \
	else \
	  cargo test --locked; \
	fi

test-deps:
	scripts/install-test-deps.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

# Regenerate the CRDs (and the chart's copies) after changing src/operator/crd.rs or src/operator/mirror/api.rs.
crd:
	cargo run --quiet -- crd > crds/bundlecopies.bundlecopy.dev.yaml
	cargo run --quiet -- crd bundlemirror > crds/bundlemirrors.bundlecopy.dev.yaml
	cp crds/*.yaml charts/bundlecopy-operator/crds/

bench:
	bench/run.sh
