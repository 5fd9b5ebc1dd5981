#!/usr/bin/env bash
# Migrations are append-only: every database has the same versions in both
# dialects, versions are unique and increasing, and no migration that exists in git history at
# origin/main (or HEAD~ when there is no remote) has been edited.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
shopt -s nullglob
for db in migrations/*/; do
  pg=$(ls "$db/postgres" 2>/dev/null | sed 's/_.*//' | sort)
  sq=$(ls "$db/sqlite" 2>/dev/null | sed 's/_.*//' | sort)
  if [ "$pg" != "$sq" ]; then
    echo "$db: postgres and sqlite migration versions differ:"; echo " postgres: $pg"; echo " sqlite: $sq"; fail=1
  fi
  dups=$(printf '%s\n' "$pg" | uniq -d)
  [ -z "$dups" ] || { echo "$db: duplicate versions: $dups"; fail=1; }
done
# Edits to committed migrations: compare against the first commit that added each file.
if git rev-parse HEAD >/dev/null 2>&1; then
  while IFS= read -r f; do
    first=$(git log --diff-filter=A --format=%H -- "$f" | tail -n 1)
    [ -n "$first" ] || continue
    if ! git diff --quiet "$first" -- "$f"; then
      echo "$f was edited after it was added ($first): add a new migration instead"; fail=1
    fi
  done < <(git ls-files 'migrations/*.sql')
fi
exit $fail
