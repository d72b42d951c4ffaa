#!/usr/bin/env bash
# Stop the one-node SLURM that start_local_slurm.sh started: exactly the pids in its pid files
# (never by process name, so another SLURM or munge on the machine is left alone).
#
#   bash scripts/slurm/stop_local_slurm.sh                 # slurmd, slurmctld, munged, symlink
#   bash scripts/slurm/stop_local_slurm.sh --slurm-only    # keep munged (used on a config change)
set -euo pipefail

ROOT="${SPO_SLURM_ROOT:-/tmp/spo-slurm}"
RUN="$ROOT/run"
DEFAULT_CONF=/etc/slurm/slurm.conf

stop_pid_file() {  # $1 = pid file
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    printf '[spo-slurm] stopping %s (pid %s)\n' "$(basename "$1" .pid)" "$pid" >&2
    kill "$pid" 2>/dev/null || true
    # SIGTERM first; slurmctld saves its state on the way out, which takes a moment.
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

stop_pid_file "$RUN/slurmd.pid"
stop_pid_file "$RUN/slurmctld.pid"
[[ "${1:-}" == --slurm-only ]] && exit 0
stop_pid_file "$RUN/munged.pid"
rm -f "$ROOT/munge/munged.pid"
# Remove the default-path symlink only when it is ours.
if [[ -L "$DEFAULT_CONF" && "$(readlink "$DEFAULT_CONF")" == "$ROOT/etc/slurm.conf" ]]; then
  rm -f "$DEFAULT_CONF"
fi
exit 0
