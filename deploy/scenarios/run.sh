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
#   chaos       a 60-round job (scenarios/chaos.toml) undisturbed first, then again under six faults in a random order at
#               random rounds (seed CHAOS_SEED, default 7): three client kills (each client back
#               within a second), two coordinator kills and one outage of all five clients. The
#               job finishes, every round once, with a final test accuracy within 1 point of the
#               undisturbed run's.
#
# Every fault is checked to have taken effect (the container killed, paused or cut off) and to
# have landed while the job still had rounds to show its effect; a docker command's error is the
# scenario's failure.
#
#   deploy/scenarios/run.sh [kill|straggler|disconnect|restart|chaos ...]   (default: all five)
#
# Needs the images from deploy/build-images.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scenarios=("$@")
[[ ${#scenarios[@]} -eq 0 ]] && scenarios=(kill straggler disconnect restart chaos)

# On failure, the end of every service's log goes with the reason, so a CI log says what happened.
fail() {
    echo "FAIL [$name]: $*" >&2
    for svc in coordinator client-0 client-1 client-2 client-3 client-4; do
        c="$(compose ps -q "$svc" 2>/dev/null)" || continue
        [[ -n "$c" ]] && docker logs --tail 12 "$c" 2>&1 | sed "s/^/$svc | /" >&2
    done
    exit 1
}

# Compose v2 (`docker compose`) where installed, else v1 (`docker-compose`).
if docker compose version >/dev/null 2>&1; then DC=(docker compose); else DC=(docker-compose); fi
compose() {
    local files=(-f docker-compose.yml -f scenarios/override.yml)
    [[ "$name" == chaos ]] && files+=(-f scenarios/chaos.yml)
    "${DC[@]}" -p "shoal-$name" "${files[@]}" "$@"
}

# The scenario's job and its round count, from its spec.
set_job() {
    local job=scenarios/job.toml
    [[ "$name" == chaos ]] && job=scenarios/chaos.toml
    ROUNDS="$(sed -n 's/^rounds *= *\([0-9]*\).*/\1/p' "$job")"
    [[ -n "$ROUNDS" ]] || fail "$job: no rounds = N line"
    ROUND_LINE="round [0-9]*/$ROUNDS "
}

# Logs are read with the docker CLI from the container id, never through compose: compose (v1
# above all) takes seconds per call on a loaded machine, and a reader that stops early (grep -q,
# grep -m, awk's exit) makes the writer fail with EPIPE, which `set -o pipefail` turns into a
# failed check. So a log is first copied whole into a file, and only then searched.
log_of() { # service -> file holding its whole log (stdout and stderr) so far
    local f
    f="$(mktemp)"
    docker logs "$(cid "$1")" >"$f" 2>&1 || fail "cannot read the log of $1"
    echo "$f"
}
declare -A CIDS
cid() { # service -> container id (the same container across a kill and a start; cached, as
    # compose takes seconds per call and faults must land quickly)
    if [[ -z "${CIDS[$1]:-}" ]]; then
        local c
        c="$(compose ps -q "$1")" && [[ -n "$c" ]] || fail "no container for $1"
        CIDS[$1]=$c
    fi
    echo "${CIDS[$1]}"
}
state_of() { docker inspect -f "{{.State.$2}}" "$(cid "$1")"; }

# Rounds the coordinator has logged so far.
rounds_done() { grep -c "$ROUND_LINE" "$(log_of coordinator)" || true; }

# Returns as soon as the coordinator has logged `want` rounds, following its log as a stream
# (polling could miss a whole fast job). The reader stops early on purpose, so the pipeline's
# status is not used: the count is.
wait_rounds() {
    local want=$1 seen
    seen="$( (timeout 180 docker logs -f "$(cid coordinator)" 2>&1 || true) | (grep -c -m "$want" "$ROUND_LINE" || true))"
    [[ ${seen:-0} -ge $want ]] || fail "fewer than $want rounds after 180 s (saw ${seen:-0})"
}

# Runs a docker command that injects a fault; its error is the scenario's failure, not noise.
inject() {
    local out
    out="$("$@" 2>&1)" || fail "could not inject the fault ($*): $out"
}

# A fault must land while the job runs, with rounds left to show its effect.
mid_job() { # rounds done when the fault landed, rounds it needs after it
    [[ $(($1 + $2)) -le $ROUNDS ]] ||
        fail "the fault landed after round $1 of $ROUNDS, too late to show its effect (the job ran faster than the scenario)"
}

# Waits for the coordinator to exit, then copies its run folder out; prints the folder.
collect() {
    local deadline=$((SECONDS + 300)) id out
    while [[ "$(state_of coordinator Running)" == "true" ]]; do
        [[ $SECONDS -lt $deadline ]] || fail "the job did not end within 300 s"
        sleep 1
    done
    out="$(mktemp -d)"
    docker cp "$(cid coordinator):/state/runs" "$out/" >/dev/null
    id="$(ls "$out/runs")"
    [[ -n "$id" && "$id" != *$'\n'* ]] || fail "expected one run folder, found: ${id:-none}"
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
    set_job
    CIDS=()
    compose down -v >/dev/null 2>&1 || true
    out="$(compose up -d 2>&1)" || { echo "$out" >&2; fail "compose up failed"; }
    case "$name" in
    kill)
        wait_rounds 2
        inject docker kill -s KILL "$(cid client-3)"
        at="$(rounds_done)"
        mid_job "$at" 2
        [[ "$(state_of client-3 Running)" == "false" ]] || fail "client-3 still runs after SIGKILL"
        dir="$(collect)"
        check_complete "$dir"
        fours="$(tail -n +2 "$dir/metrics.csv" | awk -F, -v at="$at" '$1 > at && $2 == 4' | wc -l)"
        [[ $fours -ge 1 ]] || fail "no round after the kill (round $at) completed with the 4 remaining clients"
        echo "ok: client-3 killed after round $at; $fours rounds completed at quorum (4 clients); job finished"
        ;;
    straggler)
        wait_rounds 2
        inject docker pause "$(cid client-1)"
        [[ "$(state_of client-1 Paused)" == "true" ]] || fail "client-1 is not paused after docker pause"
        # Count from when the pause is in force, as for the disconnect below: rounds can be shorter
        # than the docker command, and a pause lifted before the next round starts holds up nothing.
        at="$(rounds_done)"
        mid_job "$at" 4
        wait_rounds $((at + 2))
        inject docker unpause "$(cid client-1)"
        dir="$(collect)"
        check_complete "$dir"
        at_deadline="$(tail -n +2 "$dir/metrics.csv" | awk -F, -v at="$at" '$1 > at && $2 == 4 && $9 >= 7.5' | wc -l)"
        [[ $at_deadline -ge 1 ]] || fail "no 4-client round after the pause (round $at) ended at the 8 s deadline"
        last="$(tail -1 "$dir/metrics.csv" | cut -d, -f2)"
        [[ $last -eq 5 ]] || fail "client-1 did not take part again (last round: $last clients)"
        echo "ok: client-1 paused after round $at; $at_deadline rounds ended at the deadline with 4 clients; it took part again after unpausing"
        ;;
    disconnect)
        wait_rounds 2
        net="shoal-${name}_federation"
        inject docker network disconnect "$net" "$(cid client-2)"
        [[ "$(docker inspect -f "{{if index .NetworkSettings.Networks \"$net\"}}on{{else}}off{{end}}" "$(cid client-2)")" == "off" ]] ||
            fail "client-2 is still on $net after docker network disconnect"
        # Count from when the cut is in force, not from round 2: rounds can be shorter than the
        # docker command, and a cut that ends before the next round starts is no cut at all.
        at="$(rounds_done)"
        mid_job "$at" 6
        wait_rounds $((at + 2))
        inject docker network connect "$net" "$(cid client-2)"
        dir="$(collect)"
        check_complete "$dir"
        fours="$(tail -n +2 "$dir/metrics.csv" | awk -F, -v at="$at" '$1 > at && $2 == 4' | wc -l)"
        [[ $fours -ge 1 ]] || fail "no round after the cut (round $at) ran without the disconnected client"
        last="$(tail -1 "$dir/metrics.csv" | cut -d, -f2)"
        [[ $last -eq 5 ]] || fail "client-2 did not take part again after reconnecting (last round: $last clients)"
        # How client-2 got back, for the log: its connection attempts from the cut to its return.
        awk '/nothing from the coordinator/ { on = 1 } on && /connected|connection failed/ { print "    " $0 } on && / connected / { exit }' "$(log_of client-2)"
        back="$(tail -n +2 "$dir/metrics.csv" | awk -F, '$2 < 5 { n = 0; next } { n++ } END { print n }')"
        echo "ok: client-2 cut off after round $at ($fours rounds at quorum), then took part again (the last $back of $ROUNDS rounds)"
        ;;
    restart)
        wait_rounds 3
        inject docker kill -s KILL "$(cid coordinator)"
        at="$(rounds_done)"
        mid_job "$at" 1
        [[ "$(state_of coordinator Running)" == "false" ]] || fail "the coordinator still runs after SIGKILL"
        inject docker start "$(cid coordinator)"
        dir="$(collect)"
        check_complete "$dir"
        resumed="$(sed -n 's/.*resuming after round \([0-9]*\) of.*/\1/p' "$(log_of coordinator)")"
        [[ -n "$resumed" ]] || fail "no resume line in the log (killed after round $at)"
        # A round is stored before its line is printed: the kill may fall between the two.
        [[ $resumed -ge 3 && $resumed -le $((at + 1)) ]] || fail "resumed after round $resumed, but killed after round $at"
        echo "ok: coordinator killed after round $at, resumed after round $resumed from its state volume; every round once; job finished"
        ;;
    chaos)
        ref="$(collect)"
        check_complete "$ref"
        want="$(tail -1 "$ref/metrics.csv" | cut -d, -f6)"
        echo "   undisturbed: final test accuracy $want"
        CIDS=()
        compose down -v >/dev/null 2>&1 || true
        out="$(compose up -d 2>&1)" || { echo "$out" >&2; fail "compose up failed"; }
        RANDOM=${CHAOS_SEED:-7}
        faults=(client client client coordinator coordinator outage)
        for ((i = ${#faults[@]} - 1; i > 0; i--)); do # Fisher-Yates
            j=$((RANDOM % (i + 1)))
            tmp=${faults[i]} && faults[i]=${faults[j]} && faults[j]=$tmp
        done
        next=0 done_faults=()
        for f in "${faults[@]}"; do
            next=$((next + 2 + RANDOM % 3))
            wait_rounds "$next"
            at="$(rounds_done)"
            mid_job "$at" 2
            case "$f" in
            client)
                c="client-$((RANDOM % 5))"
                inject docker kill -s KILL "$(cid "$c")"
                [[ "$(state_of "$c" Running)" == "false" ]] || fail "$c still runs after SIGKILL"
                sleep "0.$((RANDOM % 10))"
                inject docker start "$(cid "$c")"
                f="$c killed"
                ;;
            coordinator)
                inject docker kill -s KILL "$(cid coordinator)"
                [[ "$(state_of coordinator Running)" == "false" ]] || fail "the coordinator still runs after SIGKILL"
                inject docker start "$(cid coordinator)"
                f="coordinator killed"
                ;;
            outage)
                for c in client-0 client-1 client-2 client-3 client-4; do
                    inject docker kill -s KILL "$(cid "$c")"
                done
                for c in client-0 client-1 client-2 client-3 client-4; do
                    [[ "$(state_of "$c" Running)" == "false" ]] || fail "$c still runs after SIGKILL"
                done
                sleep 1
                for c in client-0 client-1 client-2 client-3 client-4; do
                    inject docker start "$(cid "$c")"
                done
                f="all clients killed for 1 s"
                ;;
            esac
            echo "   $f after round $at"
            done_faults+=("$f after round $at")
            next=$at
        done
        dir="$(collect)"
        check_complete "$dir"
        got="$(tail -1 "$dir/metrics.csv" | cut -d, -f6)"
        awk -v a="$got" -v b="$want" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 0.01) }' ||
            fail "final test accuracy $got, undisturbed $want: more than 1 point apart (faults: $(IFS=';'; echo "${done_faults[*]}"))"
        echo "ok: seed ${CHAOS_SEED:-7}, ${#done_faults[@]} faults; every round once; final test accuracy $got (undisturbed $want)"
        ;;
    *)
        fail "unknown scenario (expected kill, straggler, disconnect, restart or chaos)"
        ;;
    esac
    compose down -v >/dev/null 2>&1 || true
done
echo "all scenarios passed: ${scenarios[*]}"
