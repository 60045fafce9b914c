#!/bin/sh
# Seed the (uncommitted) fuzz corpora from ../../shared/vectors and a few hand-written inputs, so
# libFuzzer starts from real bundle documents instead of empty input. Safe to re-run.
set -eu
cd "$(dirname "$0")"
vectors="${VECTORS:-../../shared/vectors}"
mkdir -p corpus/bundle corpus/reference corpus/docker_config

# bundle: the first byte picks the announced media type (0 OCI index, 2 OCI manifest, 5 none).
if [ -d "$vectors" ]; then
    i=0
    for file in "$vectors"/*.json; do
        for selector in '\000' '\002' '\005'; do
            i=$((i + 1))
            { printf "$selector"; cat "$file"; } > "corpus/bundle/vector-$i"
        done
    done
fi

# reference: source on the first line, destination on the second.
n=0
while IFS= read -r line; do
    n=$((n + 1))
    printf '%b' "$line" > "corpus/reference/seed-$n"
done <<'REFS'
localhost:5000/team/app:v1\nregistry.example.com/mirror
ghcr.io/getporter/examples/porter-hello:v0.2.0\nregistry.internal:5000
docker.io/library/ubuntu@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\nr.io/x:v2
ubuntu\n127.0.0.1:5000/a/b/c
[::1]:5000/app:latest\n[::1]:5001
index.docker.io/foo/bar:1.0\nlocalhost:5000/org/sub:tag
REFS

# docker_config
printf '%s' '{"auths":{"registry.example.com:5000":{"auth":"dXNlcjpwYXNz"}}}' > corpus/docker_config/auth
printf '%s' '{"auths":{"*.example.com/team":{"username":"u","password":"p"},"https://index.docker.io/v1/":{"identitytoken":"t"}},"credsStore":"desktop","credHelpers":{"gcr.io":"gcloud"}}' > corpus/docker_config/mixed
printf '%s' '{"registry.example.com":{"auth":"dXNlcjpwYXNz","email":"a@b"}}' > corpus/docker_config/dockercfg
printf '%s' '{"auths":{"[::1]:5000":{"registrytoken":"abc"},"localhost:5000/a":null}}' > corpus/docker_config/tokens
echo "seeded: $(ls corpus/bundle | wc -l) bundle, $(ls corpus/reference | wc -l) reference, $(ls corpus/docker_config | wc -l) docker_config"
