#!/usr/bin/env bash
# Controller at scale: the real `bundlecopy controller` process against a fake API server holding
# N BundleCopies that are all up to date (default 1000), real registries behind counting proxies.
# Runs the integration tests `controller_scale_*` (which assert: no status patch, no Event, one
# destination check per resource, nothing sent to the source, peak RSS <= 100 MiB), once with a
# plain destination and once with a bearer-token destination and a credentials Secret, and
# prints their figures: reconciles, patches, Events, manifest HEADs, pings, tokens, Secret reads,
# wall and CPU time of the pass, peak RSS (VmHWM of the controller process). A third test creates
# N BundleCopies at once that were never copied, all into one destination registry, and reports the
# time until all are Ready, peak RSS (asserted <= 64 MiB), status patches (asserted <= 2 per
# object) and the most copies in flight at the destination, counted from the requests it received
# (asserted within --max-copies-per-registry, 2); then it restarts the controller and runs the
# quiet pass.
#
#   bench/controller-scale.sh            # 1000 resources, debug build
#   bench/controller-scale.sh 5000       # another count
#   PROFILE=release bench/controller-scale.sh   # optimised build (compiles everything again)
set -euo pipefail
cd "$(dirname "$0")/.."

resources="${1:-1000}"
profile_flag=()
if [[ "${PROFILE:-debug}" == "release" ]]; then
  profile_flag=(--release)
fi

log="$(mktemp -t controller-scale.XXXXXX.log)"
status=0
BUNDLECOPY_SCALE_RESOURCES="$resources" \
  cargo test "${profile_flag[@]}" --test integration controller_scale -- --nocapture --test-threads 1 \
  >"$log" 2>&1 || status=$?

grep -oE 'scale: .*' "$log" || echo "no figures reported; see $log"
if [[ $status -ne 0 ]]; then
  grep -E 'panicked|assert' "$log" | head -20 || true
  echo "controller-scale: FAILED (exit $status); full log: $log"
  exit "$status"
fi
echo "controller-scale: passed ($resources resources); full log: $log"
