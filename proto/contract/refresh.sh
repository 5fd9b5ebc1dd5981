#!/usr/bin/env bash
# Refreshes the wire-contract snapshot, proto/contract/sagaflow-v1.binpb, that the `buf breaking`
# step of .ci/run compares proto/ against (README.md, "Contract versioning").
#
# Run it on a release, once that release's contracts are final, and commit the snapshot with the
# release. It refuses to snapshot a contract that breaks the current snapshot: a change that
# breaks v1 goes into a new `v2` package, never into v1 (needs `buf`: pip install buf-bin).
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot=contract/sagaflow-v1.binpb
if [ -f "$snapshot" ]; then
  buf breaking --against "$snapshot"
fi
# No source info: comments and formatting are not the wire contract (and would churn the file).
buf build --exclude-source-info -o "$snapshot"
echo "refreshed proto/$snapshot"
