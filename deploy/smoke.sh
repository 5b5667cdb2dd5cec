#!/usr/bin/env bash
# The compose acceptance: `up` runs the 5-client job of deploy/jobs/compose.toml to completion,
# and the coordinator's log shows one line per round. Needs the images from build-images.sh.
set -euo pipefail
cd "$(dirname "$0")"
if docker compose version >/dev/null 2>&1; then DC=(docker compose); else DC=(docker-compose); fi
compose() { "${DC[@]}" -p shoal-smoke -f docker-compose.yml "$@"; }
compose down -v >/dev/null 2>&1 || true
trap 'compose down -v >/dev/null 2>&1 || true' EXIT
compose up --exit-code-from coordinator >/dev/null 2>&1 || {
    compose logs --no-color coordinator | tail -20
    echo "FAIL: the compose job did not finish" >&2
    exit 1
}
rounds="$(compose logs --no-color coordinator | grep -c 'round [0-9]*/20 ')"
[[ "$rounds" -eq 20 ]] || { echo "FAIL: $rounds round lines in the coordinator's log, expected 20" >&2; exit 1; }
compose logs --no-color coordinator | grep -E 'round 20/20|final test_acc'
echo "ok: docker-compose ran the 5-client job to completion, one log line per round"
