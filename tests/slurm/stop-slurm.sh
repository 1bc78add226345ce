#!/usr/bin/env bash
# Stop the daemons tests/slurm/start-slurm.sh STATE_DIR started, by the PIDs it recorded, in reverse
# start order (slurmd, slurmctld, munged): SIGTERM, then SIGKILL after 15 s. A PID is only signalled
# while it still runs the program it was recorded for, so a recycled PID is never hit. Jobs still
# running on the node are cancelled first. Safe to run twice, or after a failed start.
set -uo pipefail

STATE=${1:?usage: stop-slurm.sh STATE_DIR}
[ -f "$STATE/pids/started" ] || { echo "stop-slurm: nothing started in $STATE" >&2; exit 0; }
export SLURM_CONF=$STATE/etc/slurm.conf PATH=/usr/sbin:/usr/bin:$PATH

if grep -qx slurmctld "$STATE/pids/started"; then
    timeout -k 2 15 scancel --full --quiet --partition=debug 2>/dev/null || true
fi

alive() {  # PID NAME: the process runs NAME
    [ -n "$1" ] && [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

status=0
for name in $(tac "$STATE/pids/started"); do
    pid=$(cat "$STATE/pids/$name.pid" 2>/dev/null || true)
    if ! alive "$pid" "$name"; then
        echo "stop-slurm: $name (pid ${pid:-?}) is not running" >&2
        continue
    fi
    kill -TERM "$pid"
    for _ in $(seq 150); do alive "$pid" "$name" || break; sleep 0.1; done
    if alive "$pid" "$name"; then
        echo "stop-slurm: $name (pid $pid) ignored SIGTERM; SIGKILL" >&2
        kill -KILL "$pid"
        sleep 0.5
        alive "$pid" "$name" && status=1
    fi
    echo "stop-slurm: stopped $name (pid $pid)" >&2
done
: >"$STATE/pids/started"
exit "$status"
