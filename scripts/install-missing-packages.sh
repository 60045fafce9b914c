#!/usr/bin/env bash
# Install the Debian packages that are missing, as root with apt-get; shared by
# scripts/install-test-deps.sh (make test) and bench/run.sh (make bench).
# Each argument is PACKAGE=TEST: PACKAGE is installed when the shell command TEST fails, e.g.
#   scripts/install-missing-packages.sh skopeo='command -v skopeo' python3-venv='python3 -c "import venv"'
# A PACKAGE written with a leading `?` is optional: when it cannot be installed (not root), it is
# skipped with a note instead of failing.
set -euo pipefail
missing=()
required=()
for argument in "$@"; do
  package="${argument%%=*}"
  test="${argument#*=}"
  if ! bash -c "${test}" >/dev/null 2>&1; then
    missing+=("${package#\?}")
    [[ "${package}" == \?* ]] || required+=("${package}")
  fi
done
((${#missing[@]})) || exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "== installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
elif ((${#required[@]})); then
  echo "missing ${missing[*]}: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
else
  echo "optional packages not installed (not root): ${missing[*]}" >&2
fi
