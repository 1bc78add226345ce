#!/usr/bin/env bash
# Start a real single-node Slurm on localhost for tests/test_slurm.py (and by hand).
#
#   tests/slurm/start-slurm.sh STATE_DIR      # then: export PATH=STATE_DIR/bin:$PATH
#   tests/slurm/stop-slurm.sh  STATE_DIR      # stops exactly the daemons this script started
#
# Needs root. Installs Debian's slurmctld, slurmd, slurm-client and munge with apt-get when they are
# missing. Everything else lives in STATE_DIR: slurm.conf and gres.conf (no accounting, no cgroups,
# one node `localhost` with every CPU and fake GPUs backed by /dev/null, ...), state, spool, logs and
# the PID files of the daemons started here (STATE_DIR/pids/*.pid; a munged that was already
# running is used and left alone). /etc/slurm is not touched: clients find the config through the
# shims in STATE_DIR/bin (see below), which sbatch --export=ALL hands on to jobs with PATH.
# Prints SLURM_CONF=... and SLURM_BIN=... on stdout.
#
# Exit status: 0 when the node is idle and takes jobs; 3 when Slurm cannot be started here (not
# root, no apt-get, the install failed); anything else is a failure after the install.
#
# Environment: PDIFF_SLURM_CTLD_PORT (6817) and PDIFF_SLURM_SLURMD_PORT (6818), the daemons' ports;
# PDIFF_SLURM_GPUS (1), fake GPUs on the node; PDIFF_SLURM_CPUS (nproc), CPUs of the node.
set -euo pipefail

STATE=${1:?usage: start-slurm.sh STATE_DIR}
CTLD_PORT=${PDIFF_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${PDIFF_SLURM_SLURMD_PORT:-6818}
GPUS=${PDIFF_SLURM_GPUS:-1}
CPUS=${PDIFF_SLURM_CPUS:-$(nproc)}

log() { echo "start-slurm: $*" >&2; }
cannot() { log "cannot start Slurm here: $*"; exit 3; }

[ "$(id -u)" = 0 ] || cannot "not root (the daemons and the install need root)"

# --- install (once) ---------------------------------------------------------------------------
need_install=0
for tool in slurmctld slurmd sbatch squeue scontrol munged; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || need_install=1
done
if [ "$need_install" = 1 ]; then
    command -v apt-get >/dev/null 2>&1 || cannot "Slurm is not installed and there is no apt-get"
    log "installing slurmctld slurmd slurm-client munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(slurmctld slurmd slurm-client munge)
    if ! timeout -k 10 600 apt-get install -y -q "${pkgs[@]}" >"${TMPDIR:-/tmp}/pdiff-slurm-apt.log" 2>&1; then
        log "apt-get install failed; apt-get update, then again"
        timeout -k 10 300 apt-get update -q >>"${TMPDIR:-/tmp}/pdiff-slurm-apt.log" 2>&1 || true
        timeout -k 10 600 apt-get install -y -q "${pkgs[@]}" >>"${TMPDIR:-/tmp}/pdiff-slurm-apt.log" 2>&1 \
            || { tail -20 "${TMPDIR:-/tmp}/pdiff-slurm-apt.log" >&2; cannot "apt-get install failed"; }
    fi
fi
export PATH=/usr/sbin:/usr/bin:$PATH

mkdir -p "$STATE"/{etc,state,spool,log,pids}
STATE=$(cd "$STATE" && pwd)
if [ -s "$STATE/pids/started" ]; then
    log "daemons from an earlier start are recorded in $STATE/pids; run stop-slurm.sh $STATE first"
    exit 1
fi
: >"$STATE/pids/started"   # names of the daemons started by this call, in start order

# --- munge -------------------------------------------------------------------------------------
if timeout -k 2 10 munge -n </dev/null 2>/dev/null | timeout -k 2 10 unmunge >/dev/null 2>&1; then
    log "munged already running; using it (and leaving it running)"
else
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 0700 /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
            || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    rm -f /run/munge/munged.pid
    # munged refuses to run as root: it runs as the munge user, forks and writes its PID file.
    timeout -k 2 20 runuser -u munge -- munged --pid-file=/run/munge/munged.pid \
        || { tail -5 /var/log/munge/munged.log >&2 || true; exit 1; }
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$STATE/pids/munged.pid"
    echo munged >>"$STATE/pids/started"
    timeout -k 2 10 munge -n </dev/null | timeout -k 2 10 unmunge >/dev/null \
        || { log "munge does not work"; exit 1; }
fi

# --- configuration -----------------------------------------------------------------------------
# Slurm rejects a job asking for more memory than the node has; the rules ask for up to 8 GB (see
# workflow/profiles/slurm). The node claims at least 64 GB (config_overrides lets slurmd start on a
# smaller machine); memory is not a consumable resource here (CR_Core), so nothing is reserved.
mem_mb=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
[ "$mem_mb" -ge 65536 ] || mem_mb=65536
host=$(hostname -s)
gres_node=""; gres_types=""
if [ "$GPUS" -gt 0 ]; then
    gres_types="GresTypes=gpu"
    gres_node="Gres=gpu:$GPUS"
fi

cat >"$STATE/etc/slurm.conf" <<EOF
# Written by tests/slurm/start-slurm.sh: a single-node test cluster, no accounting, no cgroups.
ClusterName=pdiff-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool/slurmd-%n
SlurmctldPidFile=$STATE/pids/slurmctld.pid
SlurmdPidFile=$STATE/pids/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No slurmdbd: sacct has nothing to read, so Snakemake must poll with squeue
# (--slurm-status-command squeue), which sees finished jobs for MinJobAge seconds. The plugin
# falls back to sacct when MinJobAge < 3 x --slurm-init-seconds-before-status-checks. An hour
# (default 300 s) also keeps every finished job of a test run in "scontrol show job".
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
# No cgroups in a container: track processes by parent PID, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
$gres_types
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb $gres_node State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
# Fake GPUs: Slurm only needs a device file per GPU to count and hand out (CUDA_VISIBLE_DEVICES is
# set in the job; nothing ever opens the file). Up to four, one character device each.
fake_devices=(/dev/null /dev/zero /dev/full /dev/urandom)
[ "$GPUS" -le ${#fake_devices[@]} ] || { log "at most ${#fake_devices[@]} fake GPUs"; exit 1; }
: >"$STATE/etc/gres.conf"
for ((i = 0; i < GPUS; i++)); do
    echo "NodeName=localhost Name=gpu File=${fake_devices[$i]}" >>"$STATE/etc/gres.conf"
done
export SLURM_CONF=$STATE/etc/slurm.conf

# Client shims: STATE_DIR/bin/{srun,sbatch,...} run the real tool with SLURM_CONF set. Put that
# folder first on PATH. Needed because inside a job the slurm-jobstep plugin starts the rule with
# `srun` under an environment stripped of every SLURM_* variable but the job's identity, SLURM_CONF
# included; a real cluster has its config in /etc/slurm, which this script leaves alone.
mkdir -p "$STATE/bin"
for tool in srun sbatch squeue scontrol sinfo scancel sacct; do
    real=$(command -v "$tool") || { log "$tool not found after the install"; exit 1; }
    printf '#!/bin/bash\n# Written by tests/slurm/start-slurm.sh: %s for the test cluster.\nSLURM_CONF=%q exec %q "$@"\n' \
        "$tool" "$SLURM_CONF" "$real" >"$STATE/bin/$tool"
    chmod +x "$STATE/bin/$tool"
done

# --- daemons -----------------------------------------------------------------------------------
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$CTLD_PORT" "$SLURMD_PORT"; do
    if port_busy "$port"; then
        log "port $port is in use (another Slurm?); set PDIFF_SLURM_CTLD_PORT/PDIFF_SLURM_SLURMD_PORT"
        exit 1
    fi
done

started() {  # NAME PIDFILE: wait for the daemon's PID file, record it as ours
    for _ in $(seq 100); do [ -s "$2" ] && break; sleep 0.1; done
    [ -s "$2" ] || { log "$1 wrote no PID file; its log:"; tail -20 "$STATE/log/$1.log" >&2; exit 1; }
    echo "$1" >>"$STATE/pids/started"
}

timeout -k 2 30 slurmctld -c -f "$SLURM_CONF"
started slurmctld "$STATE/pids/slurmctld.pid"
for _ in $(seq 60); do
    timeout -k 2 10 scontrol ping 2>/dev/null | grep -q "is UP" && break
    sleep 0.5
done
timeout -k 2 10 scontrol ping | grep -q "is UP" \
    || { log "slurmctld does not answer; its log:"; tail -20 "$STATE/log/slurmctld.log" >&2; exit 1; }

timeout -k 2 30 slurmd -f "$SLURM_CONF" -N localhost
started slurmd "$STATE/pids/slurmd.pid"
state=""
for i in $(seq 120); do
    state=$(timeout -k 2 10 sinfo -h -n localhost -o %T 2>/dev/null || true)
    case "$state" in
        idle*|mixed*|allocated*) break ;;
        drain*|down*) [ $((i % 10)) = 0 ] && timeout -k 2 10 scontrol update nodename=localhost state=resume || true ;;
    esac
    sleep 0.5
done
case "$state" in
    idle*|mixed*|allocated*) ;;
    *) log "node localhost is '$state', not idle; slurmd's log:"; tail -20 "$STATE/log/slurmd.log" >&2; exit 1 ;;
esac

log "Slurm up: node localhost, $CPUS CPUs, $GPUS fake GPU(s); export PATH=$STATE/bin:\$PATH"
echo "SLURM_CONF=$SLURM_CONF"
echo "SLURM_BIN=$STATE/bin"
