#!/usr/bin/env bash
# make bench: install what the benchmark needs when missing (Debian docker-registry, skopeo,
# openssl, python3; apache2-utils for htpasswd), build the release binary, run bench/bench.py.
# Arguments (or $BENCH_ARGS, e.g. `make bench BENCH_ARGS=--quick`) go to bench.py; see --help.
set -euo pipefail
cd "$(dirname "$0")/.."

# htpasswd is optional (bench.py falls back to Python's crypt module), but crypt is gone in 3.13.
scripts/install-missing-packages.sh \
  docker-registry='command -v docker-registry' skopeo='command -v skopeo' \
  openssl='command -v openssl' python3='command -v python3' '?apache2-utils=command -v htpasswd'

echo "== cargo build --release" >&2
cargo build --release --locked --bin bundlecopy

# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
exec python3 bench/bench.py ${BENCH_ARGS:-} "$@"
