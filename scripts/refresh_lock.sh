#!/usr/bin/env bash
# Refresh requirements.lock from pyproject.toml (dependencies, the test extra, [tool.spo-repro.lock]).
#   bash scripts/refresh_lock.sh
# Uses uv (`uv pip compile --generate-hashes`, the version pinned in pyproject.toml) in a throwaway
# venv; needs the PyPI registry. Commit the new lock, then reinstall:
#   .venv/bin/pip install --require-hashes -r requirements.lock && .venv/bin/pip install --no-deps -e .
set -euo pipefail
cd "$(dirname "$0")/.."
table=$(python3 -m spo.environment lock-table)
get() { python3 -c "import json,sys; v=json.loads(sys.argv[1])[sys.argv[2]]; print('\n'.join(v) if isinstance(v, list) else v)" "$table" "$1"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/uv"
"$tmp/uv/bin/pip" install --quiet "uv==$(get uv)"
get pins > "$tmp/pins.txt"
"$tmp/uv/bin/uv" pip compile pyproject.toml --extra test --constraint "$tmp/pins.txt" \
  --generate-hashes --python-version "$(get python-version)" --python-platform "$(get python-platform)" \
  --no-header --quiet --output-file "$tmp/lock.txt"
{
  echo "# The locked environment of spo-repro: every package, exact version, sha256 hashes."
  echo "# Install:  .venv/bin/pip install --require-hashes -r requirements.lock && .venv/bin/pip install --no-deps -e ."
  echo "# Refresh:  bash scripts/refresh_lock.sh   (solved by uv $(get uv) for Python $(get python-version), $(get python-platform))"
  echo "# inputs-sha256: $(python3 -m spo.environment inputs-digest)"
  cat "$tmp/lock.txt"
} > requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) packages)"
