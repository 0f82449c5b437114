# Shared paths and helpers for start_cluster.sh / stop_cluster.sh (sourced, not run).
# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this file

SLURM_CONF=/etc/slurm/slurm.conf
# Everything the test cluster writes lives under these three roots, so a reset is one rm -rf away.
SLURM_TEST_STATE_DIR=${SLURM_TEST_STATE_DIR:-/var/lib/slurm-test}
SLURM_TEST_RUN_DIR=${SLURM_TEST_RUN_DIR:-/run/slurm-test}
SLURM_TEST_LOG_DIR=${SLURM_TEST_LOG_DIR:-/var/log/slurm-test}
SLURM_TEST_NODES=(node1 node2)
MUNGE_PIDFILE=/run/munge/munged.pid
MUNGE_SOCKET=/run/munge/munge.socket.2

ctld_pidfile() { echo "$SLURM_TEST_RUN_DIR/slurmctld.pid"; }
slurmd_pidfile() { echo "$SLURM_TEST_RUN_DIR/slurmd-$1.pid"; }

# Serializes start/stop runs (another test session may run one at the same time); held until exit.
lock_scripts() {
    mkdir -p "$SLURM_TEST_RUN_DIR"
    exec 9>"$SLURM_TEST_RUN_DIR/scripts.lock"
    flock -w 300 9 || die "another start_cluster.sh/stop_cluster.sh held $SLURM_TEST_RUN_DIR/scripts.lock for 300 s"
}

log() { echo "[slurm-test] $*"; }
die() {
    echo "[slurm-test] ERROR: $*" >&2
    exit 1
}

# Prints the PID from a pidfile if that process is alive (not a zombie) and is the named daemon.
# Daemons here are reparented to a PID 1 that may not reap them, so "kill -0" alone is not enough.
live_pid() {
    local pidfile=$1 name=$2 pid state
    [[ -r $pidfile ]] || return 1
    pid=$({ tr -dc '0-9' <"$pidfile"; } 2>/dev/null)
    [[ -n $pid && -r /proc/$pid/stat ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]] || return 1
    echo "$pid"
}

# Stops the daemon named in a pidfile: SIGTERM, up to 15 s, then SIGKILL. Dead or zombie counts as stopped.
stop_daemon() {
    local pidfile=$1 name=$2 pid i
    if ! pid=$(live_pid "$pidfile" "$name"); then
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        live_pid "$pidfile" "$name" >/dev/null || break
        sleep 0.1
    done
    if live_pid "$pidfile" "$name" >/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 15 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

# Cancels every job while the controller still answers, so no job processes outlive the cluster.
cancel_all_jobs() {
    local jobs i
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null) || return 0
    [[ -n $jobs ]] || return 0
    log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
    # shellcheck disable=SC2086  # one job id per word
    timeout 10 scancel $jobs 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        [[ -z $(timeout 10 squeue -h -t running,completing -o %i 2>/dev/null) ]] && return 0
        sleep 0.5
    done
    log "jobs still running or completing after 20 s; stopping the daemons anyway"
}

stop_slurm_daemons() {
    local node
    for node in "${SLURM_TEST_NODES[@]}"; do
        stop_daemon "$(slurmd_pidfile "$node")" slurmd
    done
    stop_daemon "$(ctld_pidfile)" slurmctld
}
