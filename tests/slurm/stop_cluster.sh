#!/usr/bin/env bash
# Stops the test cluster started by start_cluster.sh: cancels its jobs, then stops both slurmd, slurmctld
# and munged by the PIDs in their own pidfiles. Safe to run twice or after a half-started cluster.
# Leaves the packages, the config and the logs in place.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/slurm/common.sh
source "$HERE/common.sh"

[[ $(id -u) -eq 0 ]] || die "must run as root"
lock_scripts
if [[ -f $SLURM_CONF ]] && command -v squeue >/dev/null; then
    cancel_all_jobs
fi
stop_slurm_daemons
stop_daemon "$MUNGE_PIDFILE" munged
log "stopped"
