#!/usr/bin/env bash
# make demo: Porter's registry guide, with bundlecopy.
# Starts two local registries -- plain HTTP on localhost:5001 and TLS with a throw-away CA on
# localhost:5002 --, publishes a small sample bundle to the first, copies it to the second with
# --insecure-registry, prints `bundlecopy inspect` of the copy, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
install_packages() {
  local missing=()
  need docker-registry || missing+=(docker-registry)
  need openssl || missing+=(openssl)
  need curl || missing+=(curl)
  need python3 || missing+=(python3)
  if ((${#missing[@]})); then
    echo "== installing ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then echo "run as root or install: apt-get install -y ${missing[*]}" >&2; exit 1; fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
install_packages

for port in 5001 5002; do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" || curl -sk -o /dev/null --max-time 1 "https://127.0.0.1:$port/"; then
    echo "port $port is already in use; stop what listens there and run make demo again" >&2; exit 1
  fi
done

echo "== building bundlecopy"
cargo build --quiet --bin bundlecopy
bin=$PWD/target/debug/bundlecopy

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "== making a throw-away CA and a certificate for localhost"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 -keyout "$work/ca.key" -out "$work/ca.pem" \
  -subj "/CN=bundlecopy demo CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$work/server.key" -out "$work/server.csr" -subj "/CN=localhost" 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$work/leaf.ext"
openssl x509 -req -sha256 -days 2 -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -out "$work/server.pem" -extfile "$work/leaf.ext" 2>/dev/null

start_registry() { # name port [tls]
  local name=$1 port=$2 tls=${3:-}
  mkdir -p "$work/$name"
  {
    printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\n'
    printf 'storage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}\n' "$work/$name"
    printf 'http:\n  addr: 127.0.0.1:%s\n  secret: demo-%s\n' "$port" "$name"
    [[ -n $tls ]] && printf '  tls: {certificate: %s, key: %s}\n' "$work/server.pem" "$work/server.key"
  } > "$work/$name.yml"
  env $(env | sed -n 's/^\(REGISTRY_[A-Za-z0-9_]*\)=.*/-u \1/p') docker-registry serve "$work/$name.yml" \
    > "$work/$name.log" 2>&1 &
  pids+=($!)
  local scheme=http; [[ -n $tls ]] && scheme=https
  for _ in $(seq 1 100); do
    curl -s -o /dev/null --cacert "$work/ca.pem" "$scheme://localhost:$port/v2/" && return 0
    sleep 0.1
  done
  echo "registry $name did not start:" >&2; cat "$work/$name.log" >&2; exit 1
}
echo "== starting registries: plain HTTP on localhost:5001, TLS (untrusted CA) on localhost:5002"
start_registry plain 5001
start_registry tls 5002 tls

echo "== publishing a sample bundle to localhost:5001/demo/porter-hello:v0.2.0"
python3 scripts/publish-sample-bundle.py http://localhost:5001 demo/porter-hello v0.2.0 \
  --layers 2 --layer-size 4194304 --components 2

echo
echo "\$ bundlecopy copy --source localhost:5001/demo/porter-hello:v0.2.0 --destination localhost:5002/team --insecure-registry"
start=$(date +%s.%N)
"$bin" copy --source localhost:5001/demo/porter-hello:v0.2.0 --destination localhost:5002/team --insecure-registry
end=$(date +%s.%N)
printf '(copy wall time: %.2f s)\n' "$(echo "$end - $start" | bc 2>/dev/null || python3 -c "print($end - $start)")"

echo
echo "\$ bundlecopy inspect localhost:5002/team/porter-hello:v0.2.0 --insecure-registry"
"$bin" inspect localhost:5002/team/porter-hello:v0.2.0 --insecure-registry

echo
echo "\$ bundlecopy copy ... again (everything is already there)"
"$bin" copy --source localhost:5001/demo/porter-hello:v0.2.0 --destination localhost:5002/team --insecure-registry
echo
echo "== demo done; stopping the registries"
