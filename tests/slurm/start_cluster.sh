#!/usr/bin/env bash
# Starts a real two-node SLURM cluster (node1, node2, partition "debug") on this one machine.
#
# Idempotent: installs the Debian packages when missing, (re)writes /etc/slurm/slurm.conf, starts only the
# daemons that are not already healthy (all of them when the config changed), then waits until both nodes
# are exactly "idle". Needs root; no systemd. Logs: $SLURM_TEST_LOG_DIR (default /var/log/slurm-test).
#
# Exit status: 0 ready; 3 this machine cannot run it (not root, packages unavailable); 1 any other failure.
# Env: SLURM_TEST_CTLD_PORT (6817); the nodes use the next two ports. SLURM_TEST_READY_TIMEOUT (60 s).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/slurm/common.sh
source "$HERE/common.sh"

CTLD_PORT=${SLURM_TEST_CTLD_PORT:-6817}
READY_TIMEOUT=${SLURM_TEST_READY_TIMEOUT:-60}
PACKAGES=(slurmctld slurmd slurm-client munge)
DAEMON_PATH=/usr/sbin:/usr/bin:/sbin:/bin

unavailable() {
    echo "[slurm-test] UNAVAILABLE: $*" >&2
    exit 3
}

install_packages() {
    local cmd missing=0
    for cmd in slurmctld slurmd sinfo sbatch munged munge unmunge; do
        command -v "$cmd" >/dev/null || missing=1
    done
    ((missing)) || return 0
    command -v apt-get >/dev/null || unavailable "SLURM is not installed and apt-get is not available"
    log "installing ${PACKAGES[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${PACKAGES[@]}"; } >"$SLURM_TEST_LOG_DIR/apt.log" 2>&1; then
        tail -n 20 "$SLURM_TEST_LOG_DIR/apt.log" >&2
        unavailable "apt-get could not install ${PACKAGES[*]} (log: $SLURM_TEST_LOG_DIR/apt.log)"
    fi
}

# Node i (0-based) listens on the i+1-th port after the controller's.
node_port() { echo $((CTLD_PORT + 1 + $1)); }

render_conf() {
    local host cpus i
    host=$(hostname -s)
    cpus=$(nproc)
    cat <<CONF
# Written by tests/slurm/start_cluster.sh: a two-node test cluster on one host. Do not edit by hand.
ClusterName=emotionnet-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Short credential lifetime: a requeued job becomes eligible again 10 s after the requeue (default 120 s).
AuthInfo=cred_expire=10
# No cgroups here: track processes by parent PID and bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# A requeued job becomes eligible again cred_expire s later, but only a scheduler pass after that starts
# it; backfill skips passes when nothing changed, and the main loop runs every 60 s by default, so the
# gap was 10-70 s. A main pass every 2 s keeps it near 10-12 s.
SchedulerParameters=sched_interval=2
MailProg=/bin/true
# A node that was down comes back as soon as its slurmd registers again.
ReturnToService=2
# Finished jobs stay visible to "scontrol show job" for 5 minutes (there is no accounting database).
MinJobAge=300
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$SLURM_TEST_STATE_DIR/ctld
SlurmdSpoolDir=$SLURM_TEST_STATE_DIR/spool/%n
SlurmctldPidFile=$(ctld_pidfile)
SlurmdPidFile=$SLURM_TEST_RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$SLURM_TEST_LOG_DIR/slurmctld.log
SlurmdLogFile=$SLURM_TEST_LOG_DIR/slurmd-%n.log
# Both nodes run on this host (slurmd -N <name>); they differ only by name and port.
CONF
    for i in "${!SLURM_TEST_NODES[@]}"; do
        echo "NodeName=${SLURM_TEST_NODES[i]} NodeHostname=$host NodeAddr=127.0.0.1 Port=$(node_port "$i")" \
            "CPUs=$cpus RealMemory=1024 State=UNKNOWN"
    done
    # OverSubscribe=YES: jobs that ask for --oversubscribe may share CPUs (this host has few).
    echo "PartitionName=debug Nodes=$(
        IFS=,
        echo "${SLURM_TEST_NODES[*]}"
    ) Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES"
}

# Writes slurm.conf through a temp file; returns 0 when the content changed.
write_conf() {
    local tmp
    mkdir -p "$(dirname "$SLURM_CONF")"
    tmp=$(mktemp "$SLURM_CONF.XXXXXX")
    render_conf >"$tmp"
    chmod 644 "$tmp"
    if [[ -f $SLURM_CONF ]] && cmp -s "$tmp" "$SLURM_CONF"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$SLURM_CONF"
    log "wrote $SLURM_CONF"
}

munge_works() { timeout 10 munge -n 2>/dev/null | timeout 10 unmunge >/dev/null 2>&1; }

start_munge() {
    local i
    if munge_works; then
        return 0
    fi
    stop_daemon "$MUNGE_PIDFILE" munged
    install -d -o munge -g munge -m 0755 /run/munge
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    log "starting munged"
    env -i PATH=$DAEMON_PATH runuser -u munge -- /usr/sbin/munged \
        </dev/null >>"$SLURM_TEST_LOG_DIR/munged.out" 2>&1 9>&- ||
        die "munged did not start; see $SLURM_TEST_LOG_DIR/munged.out and /var/log/munge/munged.log"
    for ((i = 0; i < 50; i++)); do
        munge_works && return 0
        sleep 0.1
    done
    die "munged is running but 'munge -n | unmunge' fails; see /var/log/munge/munged.log"
}

# Prints "pid N (command line)" for whatever listens on a TCP port; empty when free (or when ss is missing).
port_holder() {
    local pid
    command -v ss >/dev/null || return 0
    pid=$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2)
    [[ -n $pid ]] && echo "pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | sed 's/ $//'))"
    return 0
}

# Starts one daemon unless the process in its pidfile is alive; waits up to 10 s for it to stay up.
start_daemon() {
    local pidfile=$1 name=$2 port=$3 log_file=$4 holder i
    shift 4
    live_pid "$pidfile" "$name" >/dev/null && return 0
    rm -f "$pidfile"
    holder=$(port_holder "$port")
    [[ -z $holder ]] || die "port $port, needed by '$*', is held by $holder, which has no pidfile here; \
stop it, or set SLURM_TEST_CTLD_PORT to use other ports"
    log "starting $*"
    # 9>&-: the daemons must not inherit (and so hold forever) the scripts' lock.
    env -i PATH=$DAEMON_PATH "$@" </dev/null >>"$SLURM_TEST_LOG_DIR/$name.out" 2>&1 9>&- ||
        die "'$*' failed; see $SLURM_TEST_LOG_DIR/$name.out"
    for ((i = 0; i < 100; i++)); do
        live_pid "$pidfile" "$name" >/dev/null && return 0
        sleep 0.1
    done
    tail -n 15 "$log_file" >&2 || true
    die "'$*' did not stay up; see $log_file"
}

node_states() { timeout 10 sinfo -h -N -n "$(IFS=,; echo "${SLURM_TEST_NODES[*]}")" -o '%N %t' 2>/dev/null | sort -u; }

wait_until_idle() {
    local deadline states node state idle resumed=0 log_file
    deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        states=$(node_states) || states=""
        idle=0
        while read -r node state; do
            [[ $state == idle ]] && idle=$((idle + 1))
            # A drained node (e.g. "Kill task failed" in an earlier run) never returns by itself.
            if [[ $state == drain* || $state == drng* ]] && ((!resumed)); then
                log "resuming drained node $node"
                timeout 10 scontrol update NodeName="$node" State=RESUME || true
                resumed=1
            fi
        done <<<"$states"
        ((idle == ${#SLURM_TEST_NODES[@]})) && return 0
        sleep 1
    done
    echo "[slurm-test] nodes not idle after ${READY_TIMEOUT} s; sinfo says:" >&2
    echo "${states:-<no answer from slurmctld>}" >&2
    for log_file in "$SLURM_TEST_LOG_DIR"/slurmctld.log "$SLURM_TEST_LOG_DIR"/slurmd-*.log; do
        [[ -f $log_file ]] && { echo "--- tail $log_file" >&2; tail -n 15 "$log_file" >&2; }
    done
    die "the test cluster did not become ready"
}

main() {
    local i node ctld_flags=() began=$SECONDS
    [[ $(id -u) -eq 0 ]] || unavailable "must run as root (starts munged, slurmctld and slurmd)"
    lock_scripts
    mkdir -p "$SLURM_TEST_LOG_DIR" "$SLURM_TEST_STATE_DIR/ctld"
    install_packages
    if write_conf; then
        # New or changed config: running daemons hold the old one, and old jobs may not fit the new nodes.
        cancel_all_jobs
        stop_slurm_daemons
    fi
    start_munge
    # A controller started afresh drops earlier jobs and node states (-c), so a half-started or crashed
    # earlier cluster cannot leave drained nodes or stuck jobs behind.
    live_pid "$(ctld_pidfile)" slurmctld >/dev/null || ctld_flags=(-c)
    start_daemon "$(ctld_pidfile)" slurmctld "$CTLD_PORT" "$SLURM_TEST_LOG_DIR/slurmctld.log" \
        slurmctld "${ctld_flags[@]}"
    for i in "${!SLURM_TEST_NODES[@]}"; do
        node=${SLURM_TEST_NODES[i]}
        mkdir -p "$SLURM_TEST_STATE_DIR/spool/$node"
        start_daemon "$(slurmd_pidfile "$node")" slurmd "$(node_port "$i")" \
            "$SLURM_TEST_LOG_DIR/slurmd-$node.log" slurmd -N "$node"
    done
    wait_until_idle
    log "cluster ready in $((SECONDS - began)) s: $(node_states | tr '\n' ' ')(logs: $SLURM_TEST_LOG_DIR)"
}

main "$@"
