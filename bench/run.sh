#!/usr/bin/env bash
# make bench: install what the benchmark needs when missing (Debian docker-registry, skopeo,
# openssl, python3; apache2-utils for htpasswd), build the release binary, run bench/bench.py.
# Arguments (or $BENCH_ARGS, e.g. `make bench BENCH_ARGS=--quick`) go to bench.py; see --help.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
# htpasswd is optional (bench.py falls back to Python's crypt module), but crypt is gone in 3.13.
command -v htpasswd >/dev/null || missing+=(apache2-utils)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "== installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  elif [[ " ${missing[*]} " != " apache2-utils " ]]; then
    echo "missing ${missing[*]}: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

echo "== cargo build --release" >&2
cargo build --release --locked --bin bundlecopy

# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
exec python3 bench/bench.py ${BENCH_ARGS:-} "$@"
