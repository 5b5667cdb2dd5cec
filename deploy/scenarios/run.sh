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

SERVICES=(coordinator client-0 client-1 client-2 client-3 client-4)
TMP="$(mktemp -d)"
# Only the script's own shell cleans up: a forked child (a background `docker logs -f` killed
# before it has exec'd) inherits the trap and would remove the folder under the script.
trap '[[ $BASHPID == "$$" ]] && rm -rf "$TMP"' EXIT

# On failure, the end of every service's log goes with the reason, so a CI log says what happened.
fail() {
    echo "FAIL [$name]: $*" >&2
    for svc in "${SERVICES[@]}"; do
        [[ -n "${CIDS[$svc]:-}" ]] && docker logs --tail 12 "${CIDS[$svc]}" 2>&1 | sed "s/^/$svc | /" >&2
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

# Every service's container id, looked up once after `compose up` (the same container across a
# kill and a start). Everything after goes to docker directly: compose (v1 above all) takes
# seconds per call on a loaded machine, and faults must land quickly. Helpers that can fail run
# in this shell, never in a $(...) subshell, where `fail` would end only the subshell.
declare -A CIDS
find_containers() {
    CIDS=()
    local svc id
    while read -r svc id; do
        CIDS[$svc]=$id
    done < <(docker ps -a --filter "label=com.docker.compose.project=shoal-$name" \
        --format '{{.Label "com.docker.compose.service"}} {{.ID}}')
    for svc in "${SERVICES[@]}"; do
        [[ -n "${CIDS[$svc]:-}" ]] || fail "no container for $svc after compose up"
    done
}
state_of() { docker inspect -f "{{.State.$2}}" "${CIDS[$1]}"; }

# Copies a service's whole log (stdout and stderr) so far into $TMP/SERVICE.log. Logs are read
# whole and only then searched: a reader that stops early (grep -q, grep -m, awk's exit) makes the
# writer fail with EPIPE, which `set -o pipefail` turns into a failed check.
snap() { docker logs "${CIDS[$1]}" >"$TMP/$1.log" 2>&1 || fail "cannot read the log of $1"; }

# AT: the rounds the coordinator has logged so far.
count_rounds() {
    snap coordinator
    AT="$(grep -c "$ROUND_LINE" "$TMP/coordinator.log" || true)"
}

# Returns as soon as the coordinator has logged `want` rounds: it follows the log into a file
# (polling `docker logs` could miss a whole fast job) and counts there every 0.1 s.
wait_rounds() {
    local want=$1 seen=0 pid deadline=$((SECONDS + 180))
    # Emptied here, not by the child's redirection: the first count below may run before the
    # child has opened the file, and must not count the previous scenario's rounds.
    : >"$TMP/follow.log"
    docker logs -f "${CIDS[coordinator]}" >>"$TMP/follow.log" 2>&1 &
    pid=$!
    while :; do
        seen="$(grep -c "$ROUND_LINE" "$TMP/follow.log" || true)"
        [[ $seen -ge $want || $SECONDS -ge $deadline ]] && break
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    [[ $seen -ge $want ]] || fail "fewer than $want rounds after 180 s (saw $seen)"
}

# Runs a docker command that injects a fault; its error is the scenario's failure, not noise.
inject() {
    local out
    out="$("$@" 2>&1)" || fail "could not inject the fault ($*): $out"
}

# A fault must land while the job runs, with rounds left to show its effect.
mid_job() { # rounds done when the fault landed, rounds it needs after it
    [[ $1 =~ ^[0-9]+$ ]] || fail "cannot tell how many rounds were done ($1)"
    [[ $(($1 + $2)) -le $ROUNDS ]] ||
        fail "the fault landed after round $1 of $ROUNDS, too late to show its effect (the job ran faster than the scenario)"
}

# Waits for the coordinator to exit, then copies its run folder out into DIR.
collect() {
    local deadline=$((SECONDS + 300)) id
    while [[ "$(state_of coordinator Running)" == "true" ]]; do
        [[ $SECONDS -lt $deadline ]] || fail "the job did not end within 300 s"
        sleep 1
    done
    rm -rf "$TMP/runs"
    docker cp "${CIDS[coordinator]}:/state/runs" "$TMP/" >/dev/null || fail "cannot copy the run folder out"
    id="$(ls "$TMP/runs")"
    [[ -n "$id" && "$id" != *$'\n'* ]] || fail "expected one run folder, found: ${id:-none}"
    DIR="$TMP/runs/$id"
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
    find_containers
    case "$name" in
    kill)
        wait_rounds 2
        inject docker kill -s KILL "${CIDS[client-3]}"
        count_rounds && at=$AT
        mid_job "$at" 2
        [[ "$(state_of client-3 Running)" == "false" ]] || fail "client-3 still runs after SIGKILL"
        collect && dir=$DIR
        check_complete "$dir"
        fours="$(tail -n +2 "$dir/metrics.csv" | awk -F, -v at="$at" '$1 > at && $2 == 4' | wc -l)"
        [[ $fours -ge 1 ]] || fail "no round after the kill (round $at) completed with the 4 remaining clients"
        echo "ok: client-3 killed after round $at; $fours rounds completed at quorum (4 clients); job finished"
        ;;
    straggler)
        wait_rounds 2
        inject docker pause "${CIDS[client-1]}"
        [[ "$(state_of client-1 Paused)" == "true" ]] || fail "client-1 is not paused after docker pause"
        # Count from when the pause is in force, as for the disconnect below: rounds can be shorter
        # than the docker command, and a pause lifted before the next round starts holds up nothing.
        count_rounds && at=$AT
        mid_job "$at" 4
        wait_rounds $((at + 2))
        inject docker unpause "${CIDS[client-1]}"
        collect && dir=$DIR
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
        inject docker network disconnect "$net" "${CIDS[client-2]}"
        [[ "$(docker inspect -f "{{if index .NetworkSettings.Networks \"$net\"}}on{{else}}off{{end}}" "${CIDS[client-2]}")" == "off" ]] ||
            fail "client-2 is still on $net after docker network disconnect"
        # Count from when the cut is in force, not from round 2: rounds can be shorter than the
        # docker command, and a cut that ends before the next round starts is no cut at all.
        count_rounds && at=$AT
        mid_job "$at" 6
        wait_rounds $((at + 2))
        inject docker network connect "$net" "${CIDS[client-2]}"
        collect && dir=$DIR
        check_complete "$dir"
        fours="$(tail -n +2 "$dir/metrics.csv" | awk -F, -v at="$at" '$1 > at && $2 == 4' | wc -l)"
        [[ $fours -ge 1 ]] || fail "no round after the cut (round $at) ran without the disconnected client"
        last="$(tail -1 "$dir/metrics.csv" | cut -d, -f2)"
        [[ $last -eq 5 ]] || fail "client-2 did not take part again after reconnecting (last round: $last clients)"
        # How client-2 got back, for the log: its connection attempts from the cut to its return.
        snap client-2
        awk '/nothing from the coordinator/ { on = 1 } on && /connected|connection failed/ { print "    " $0 } on && / connected / { exit }' "$TMP/client-2.log"
        back="$(tail -n +2 "$dir/metrics.csv" | awk -F, '$2 < 5 { n = 0; next } { n++ } END { print n }')"
        echo "ok: client-2 cut off after round $at ($fours rounds at quorum), then took part again (the last $back of $ROUNDS rounds)"
        ;;
    restart)
        wait_rounds 3
        inject docker kill -s KILL "${CIDS[coordinator]}"
        count_rounds && at=$AT
        mid_job "$at" 1
        [[ "$(state_of coordinator Running)" == "false" ]] || fail "the coordinator still runs after SIGKILL"
        inject docker start "${CIDS[coordinator]}"
        collect && dir=$DIR
        check_complete "$dir"
        snap coordinator
        resumed="$(sed -n 's/.*resuming after round \([0-9]*\) of.*/\1/p' "$TMP/coordinator.log")"
        [[ -n "$resumed" ]] || fail "no resume line in the log (killed after round $at)"
        # A round is stored before its line is printed: the kill may fall between the two.
        [[ $resumed -ge 3 && $resumed -le $((at + 1)) ]] || fail "resumed after round $resumed, but killed after round $at"
        echo "ok: coordinator killed after round $at, resumed after round $resumed from its state volume; every round once; job finished"
        ;;
    chaos)
        collect && check_complete "$DIR"
        want="$(tail -1 "$DIR/metrics.csv" | cut -d, -f6)"
        echo "   undisturbed: final test accuracy $want"
        CIDS=()
        compose down -v >/dev/null 2>&1 || true
        out="$(compose up -d 2>&1)" || { echo "$out" >&2; fail "compose up failed"; }
        find_containers
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
            count_rounds && at=$AT
            mid_job "$at" 2
            case "$f" in
            client)
                c="client-$((RANDOM % 5))"
                inject docker kill -s KILL "${CIDS[$c]}"
                [[ "$(state_of "$c" Running)" == "false" ]] || fail "$c still runs after SIGKILL"
                sleep "0.$((RANDOM % 10))"
                inject docker start "${CIDS[$c]}"
                f="$c killed"
                ;;
            coordinator)
                inject docker kill -s KILL "${CIDS[coordinator]}"
                [[ "$(state_of coordinator Running)" == "false" ]] || fail "the coordinator still runs after SIGKILL"
                inject docker start "${CIDS[coordinator]}"
                f="coordinator killed"
                ;;
            outage)
                for c in client-0 client-1 client-2 client-3 client-4; do
                    inject docker kill -s KILL "${CIDS[$c]}"
                done
                for c in client-0 client-1 client-2 client-3 client-4; do
                    [[ "$(state_of "$c" Running)" == "false" ]] || fail "$c still runs after SIGKILL"
                done
                sleep 1
                for c in client-0 client-1 client-2 client-3 client-4; do
                    inject docker start "${CIDS[$c]}"
                done
                f="all clients killed for 1 s"
                ;;
            esac
            echo "   $f after round $at"
            done_faults+=("$f after round $at")
            next=$at
        done
        collect && dir=$DIR
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
