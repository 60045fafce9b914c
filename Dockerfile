# The bundlecopy image: the operator by default (`bundlecopy controller`); any other subcommand works too,
# e.g. `docker run IMAGE copy --source S --destination D`.
#
# Build:  docker build -t bundlecopy:dev .
# The builder's Debian (bookworm = 12) matches the runtime's (cc-debian12), so the glibc the binary links
# against is the one it runs with.

FROM rust:1.95-bookworm AS builder
WORKDIR /build

# Dependency layer: build every dependency against stub sources, so that a change to the project's own
# code does not rebuild (or re-download) them. Each target path named in Cargo.toml gets a stub, because
# cargo refuses a manifest whose declared targets are missing; so does the engine crate of the workspace.
COPY Cargo.toml Cargo.lock ./
COPY crates/engine/Cargo.toml crates/engine/
RUN mkdir -p src \
    && for target_path in $(sed -n 's/^path *= *"\(.*\)"/\1/p' Cargo.toml) src/main.rs src/lib.rs crates/engine/src/lib.rs; do \
         mkdir -p "$(dirname "$target_path")" && echo 'fn main() {}' > "$target_path"; \
       done \
    && cargo build --release --locked --bin bundlecopy \
    && rm -rf src crates/engine/src

# The real build: the engine crate, then the binary's sources. They get a fresh mtime so cargo does not
# mistake the stub build for an up-to-date one.
COPY crates ./crates
COPY src ./src
RUN find src crates -type f -exec touch {} + \
    && cargo build --release --locked --bin bundlecopy \
    && cp target/release/bundlecopy /bundlecopy

# distroless/cc: glibc, libgcc and CA certificates (for HTTPS registries), no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /bundlecopy /bundlecopy
# 65532:65532, distroless's nonroot user. The binary writes nothing to disk: run with a read-only root filesystem.
USER nonroot:nonroot
# --metrics-addr default: /metrics, /healthz and /readyz.
EXPOSE 8080
ENTRYPOINT ["/bundlecopy"]
CMD ["controller"]
