#!/usr/bin/env bash
# Fault scenarios on the docker-compose federation (deploy/docker-compose.yml, 5 clients, job
# deploy/scenarios/job.toml). Each scenario runs the job in its own compose project, injects one
# fault mid-job, waits for the coordinator to end the job, and asserts the outcome from the run's
# metrics.csv and the job's summary:
#
#   kill        SIGKILL one of five clients mid-round: that round completes at quorum (4) and the
#               job finishes.
#   straggler   pause one client past the round deadline (8 s): its round ends at the deadline
#               with 4 clients; unpaused, it takes part again.
#   disconnect  cut one client off the network for about two rounds, then reconnect it: the rounds
#               without it complete at quorum, and it takes part again afterwards.
#   restart     SIGKILL the coordinator mid-job and start it again on its state volume: the job
#               resumes and finishes with every round in metrics.csv exactly once.
#
#   deploy/scenarios/run.sh [kill|straggler|disconnect|restart ...]   (default: all four)
#
# Needs the images from deploy/build-images.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scenarios=("$@")
[[ ${#scenarios[@]} -eq 0 ]] && scenarios=(kill straggler disconnect restart)

# On failure, the end of every service's log goes with the reason, so a CI log says what happened.
fail() {
    echo "FAIL [$name]: $*" >&2
    compose logs --no-color --tail 25 >&2 2>/dev/null || true
    exit 1
}

# Compose v2 (`docker compose`) where installed, else v1 (`docker-compose`).
if docker compose version >/dev/null 2>&1; then DC=(docker compose); else DC=(docker-compose); fi
compose() { "${DC[@]}" -p "shoal-$name" -f docker-compose.yml -f scenarios/override.yml "$@"; }

# The job's round count, from its spec.
ROUNDS="$(sed -n 's/^rounds *= *\([0-9]*\).*/\1/p' scenarios/job.toml)"
[[ -n "$ROUNDS" ]] || { echo "scenarios/job.toml: no rounds = N line" >&2; exit 1; }

# Rounds the coordinator has logged so far.
rounds_done() { compose logs --no-color coordinator 2>/dev/null | grep -c "round [0-9]*/$ROUNDS " || true; }

# Returns as soon as the coordinator has logged `want` rounds. It follows the log as a stream:
# polling `compose logs` costs seconds per call on a loaded machine, and a CI run saw a whole
# 30-round job finish before a poll noticed round 3 (so the restart scenario killed a finished job).
wait_rounds() {
    local want=$1 seen
    seen="$(timeout 180 "${DC[@]}" -p "shoal-$name" -f docker-compose.yml -f scenarios/override.yml \
        logs -f --no-color coordinator 2>/dev/null | grep -c -m "$want" "round [0-9]*/$ROUNDS " || true)"
    [[ ${seen:-0} -ge $want ]] || fail "fewer than $want rounds after 180 s (saw ${seen:-0})"
}

# Waits for the coordinator to exit, then copies its run folder out; prints the folder.
collect() {
    local deadline=$((SECONDS + 300)) id out
    while [[ -n "$(compose ps -q coordinator)" && "$(docker inspect -f '{{.State.Running}}' "$(compose ps -q coordinator)")" == "true" ]]; do
        [[ $SECONDS -lt $deadline ]] || fail "the job did not end within 300 s"
        sleep 1
    done
    out="$(mktemp -d)"
    docker cp "$(compose ps -q coordinator):/state/runs" "$out/" >/dev/null
    id="$(ls "$out/runs" | head -1)"
    [[ -n "$id" ]] || fail "no run folder"
    echo "$out/runs/$id"
}

# metrics.csv columns: round,clients,train_loss,fed_loss,fed_accuracy,test_accuracy,bytes_up,bytes_down,seconds
check_complete() {
    local dir=$1
    [[ -f "$dir/summary.json" ]] || fail "the job did not finish (no summary.json)"
    local rounds
    rounds="$(tail -n +2 "$dir/metrics.csv" | cut -d, -f1 | tr '\n' ' ')"
    [[ "$rounds" == "$(seq -s ' ' 1 "$ROUNDS") " ]] || fail "rounds in metrics.csv: $rounds"
}

for name in "${scenarios[@]}"; do
    echo "== scenario $name"
    compose down -v >/dev/null 2>&1 || true
    compose up -d >/dev/null 2>&1
    case "$name" in
    kill)
        wait_rounds 2
        compose kill -s SIGKILL client-3 >/dev/null 2>&1
        dir="$(collect)"
        check_complete "$dir"
        fours="$(tail -n +2 "$dir/metrics.csv" | awk -F, '$2 == 4' | wc -l)"
        [[ $fours -ge 1 ]] || fail "no round completed with the 4 remaining clients"
        echo "ok: client-3 killed after round 2; $fours rounds completed at quorum (4 clients); job finished"
        ;;
    straggler)
        wait_rounds 2
        compose pause client-1 >/dev/null 2>&1
        # Count from when the pause is in force, as for the disconnect below: rounds can be shorter
        # than the docker command, and a pause lifted before the next round starts holds up nothing.
        paused_at="$(rounds_done)"
        wait_rounds $((paused_at + 2))
        compose unpause client-1 >/dev/null 2>&1
        dir="$(collect)"
        check_complete "$dir"
        at_deadline="$(tail -n +2 "$dir/metrics.csv" | awk -F, '$2 == 4 && $9 >= 7.5' | wc -l)"
        [[ $at_deadline -ge 1 ]] || fail "no 4-client round ended at the 8 s deadline"
        last="$(tail -1 "$dir/metrics.csv" | cut -d, -f2)"
        [[ $last -eq 5 ]] || fail "client-1 did not take part again (last round: $last clients)"
        echo "ok: client-1 paused; $at_deadline rounds ended at the deadline with 4 clients; it took part again after unpausing"
        ;;
    disconnect)
        wait_rounds 2
        net="shoal-${name}_federation"
        docker network disconnect "$net" "$(compose ps -q client-2)"
        # Count from when the cut is in force, not from round 2: rounds can be shorter than the
        # docker command, and a cut that ends before the next round starts is no cut at all.
        cut_at="$(rounds_done)"
        wait_rounds $((cut_at + 2))
        docker network connect "$net" "$(compose ps -q client-2)"
        dir="$(collect)"
        check_complete "$dir"
        fours="$(tail -n +2 "$dir/metrics.csv" | awk -F, '$2 == 4' | wc -l)"
        [[ $fours -ge 1 ]] || fail "no round ran without the disconnected client"
        last="$(tail -1 "$dir/metrics.csv" | cut -d, -f2)"
        [[ $last -eq 5 ]] || fail "client-2 did not take part again after reconnecting (last round: $last clients)"
        # How client-2 got back, for the log: its connection attempts from the cut to its return.
        compose logs --no-color client-2 |
            awk '/nothing from the coordinator/ { on = 1 } on && /connected|connection failed/ { print "    " $0 } on && / connected / { exit }'
        back="$(tail -n +2 "$dir/metrics.csv" | awk -F, '$2 < 5 { n = 0; next } { n++ } END { print n }')"
        echo "ok: client-2 cut off for 2 rounds ($fours rounds at quorum), then took part again (the last $back of $ROUNDS rounds)"
        ;;
    restart)
        wait_rounds 3
        compose kill -s SIGKILL coordinator >/dev/null 2>&1
        compose start coordinator >/dev/null 2>&1
        dir="$(collect)"
        check_complete "$dir"
        compose logs --no-color coordinator | grep -q "resuming after round" || fail "no resume line in the log"
        echo "ok: coordinator killed after round 3, resumed from its state volume; every round once; job finished"
        ;;
    *)
        fail "unknown scenario (expected kill, straggler, disconnect or restart)"
        ;;
    esac
    compose down -v >/dev/null 2>&1 || true
done
echo "all scenarios passed: ${scenarios[*]}"
