#!/usr/bin/env bash
# The compose acceptance: `up` runs the 5-client job of deploy/jobs/compose.toml to completion,
# and the coordinator's log shows one line per round. Needs the images from build-images.sh.
# With --tls: the same over mutual TLS with tokens (docker-compose.tls.yml), certificates and
# tokens made first by the override's one-shot services.
set -euo pipefail
cd "$(dirname "$0")"
if docker compose version >/dev/null 2>&1; then DC=(docker compose); else DC=(docker-compose); fi
files=(-f docker-compose.yml)
project=shoal-smoke
if [[ "${1:-}" == "--tls" ]]; then
    files+=(-f docker-compose.tls.yml)
    project=shoal-smoke-tls
fi
compose() { "${DC[@]}" -p "$project" "${files[@]}" "$@"; }
compose down -v >/dev/null 2>&1 || true
trap 'compose down -v >/dev/null 2>&1 || true' EXIT
if [[ "$project" == shoal-smoke-tls ]]; then
    compose run --rm pki-certs >/dev/null
    compose run --rm pki-tokens >/dev/null
fi
compose up --exit-code-from coordinator >/dev/null 2>&1 || {
    compose logs --no-color coordinator | tail -20
    echo "FAIL: the compose job did not finish" >&2
    exit 1
}
rounds="$(compose logs --no-color coordinator | grep -c 'round [0-9]*/20 ')"
[[ "$rounds" -eq 20 ]] || { echo "FAIL: $rounds round lines in the coordinator's log, expected 20" >&2; exit 1; }
compose logs --no-color coordinator | grep -E 'round 20/20|final test_acc'
if [[ "$project" == shoal-smoke-tls ]]; then
    # Every client came in over mutual TLS with its token; nobody was refused.
    if compose logs --no-color coordinator | grep -q 'refused'; then
        compose logs --no-color coordinator | grep 'refused' | head -5
        echo "FAIL: the coordinator refused a client" >&2; exit 1
    fi
    echo "ok: the same job over mutual TLS with client and admin tokens"
else
    echo "ok: docker-compose ran the 5-client job to completion, one log line per round"
fi
