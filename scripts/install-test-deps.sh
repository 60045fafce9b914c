#!/usr/bin/env bash
# Install what the test suite needs, when missing: Debian's docker-registry (a real OCI registry),
# skopeo (an independent OCI client), squid (a real HTTP forward proxy for the proxy tests;
# the tests run their own instances, the package's service is not needed), openssl and python3;
# then helm and kubernetes-validate for the chart tests (scripts/install-test-tools.sh).
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-missing-packages.sh \
  docker-registry='command -v docker-registry' skopeo='command -v skopeo' \
  squid='test -x /usr/sbin/squid' \
  openssl='command -v openssl' python3='command -v python3' \
  python3-venv="python3 -c 'import venv, ensurepip'" unzip='command -v unzip' curl='command -v curl'
if [[ -x scripts/install-test-tools.sh ]]; then
  scripts/install-test-tools.sh
fi
