#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests and CI of profiles/slurm.
#
#   bash scripts/slurm/start_local_slurm.sh            # install if missing, start, wait for idle
#   bash scripts/slurm/start_local_slurm.sh install    # only install slurm-wlm + munge (CI)
#   bash scripts/slurm/start_local_slurm.sh status
#   bash scripts/slurm/stop_local_slurm.sh             # stop exactly the daemons started here
#   source "${SPO_SLURM_ROOT:-/tmp/spo-slurm}/env.sh"  # then: sinfo, sbatch, squeue
#
# Debian 12 (slurm-wlm 22.05, munge), run as root, no systemd: every daemon is started by hand
# and leaves a pid file under $SPO_SLURM_ROOT/run; stop_local_slurm.sh kills only those pids.
# Partitions: "debug" (default) and "gpu" on the node "localhost"; the node advertises GRES
# gpu:1 backed by a dummy device, so `--gpus=1` jobs schedule although no GPU exists.
# Idempotent: a running cluster with an unchanged config is left alone.
set -euo pipefail

ROOT="${SPO_SLURM_ROOT:-/tmp/spo-slurm}"
NODE=localhost
WAIT_S="${SPO_SLURM_WAIT_S:-60}"
CONF="$ROOT/etc/slurm.conf"
SOCK="$ROOT/munge/munge.socket.2"
KEY="$ROOT/munge/munge.key"
RUN="$ROOT/run"
# The jobstep executor plugin strips SLURM_CONF (with every SLURM_* variable) before the `srun`
# inside each job, so that srun only finds a config at Slurm's compiled-in default path.
DEFAULT_CONF=/etc/slurm/slurm.conf

say() { printf '[spo-slurm] %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

alive() {  # $1 = pid file: true when the process it names runs
  local pid
  pid=$(cat "$1" 2>/dev/null) && [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

wait_until() {  # $1 = seconds, rest = a command that must succeed
  local n=$(( $1 * 5 )); shift
  for _ in $(seq 1 "$n"); do "$@" && return 0; sleep 0.2; done
  return 1
}

install_packages() {
  local missing=()
  for pkg in slurm-wlm munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) -eq 0 ]] || die "installing ${missing[*]} needs root (apt-get); run as root or install them first"
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

case "${1:-start}" in
  install) install_packages; exit 0 ;;
  status)
    for name in munged slurmctld slurmd; do
      if alive "$RUN/$name.pid"; then echo "$name running (pid $(cat "$RUN/$name.pid"))"
      else echo "$name stopped"; fi
    done
    exit 0 ;;
  start) ;;
  *) die "unknown command '$1': use start, install or status (stop: stop_local_slurm.sh)" ;;
esac

[[ $(id -u) -eq 0 ]] || die "must run as root (slurmd runs jobs as their user and needs root)"
t0=$SECONDS
install_packages

mkdir -p "$ROOT"/{etc,run,log,spool/slurmd,spool/slurmctld,munge,dev}
chmod 0755 "$ROOT" "$ROOT"/{etc,run,log,spool,dev}
# munged refuses a socket folder that is not a+x or that group/other may write.
chown munge:munge "$ROOT/munge"
chmod 0755 "$ROOT/munge"

# ---------------------------------------------------------------------------------------- munge
if [[ ! -s "$KEY" ]]; then
  mungekey --create --keyfile="$KEY" --force >/dev/null
  chown munge:munge "$KEY"
  chmod 0400 "$KEY"
fi
if ! alive "$RUN/munged.pid"; then
  say "starting munged"
  # munged runs as the munge user and writes its pid and log files in the folder it owns; the pid
  # is copied to run/ with the others.
  runuser -u munge -- munged --socket="$SOCK" --key-file="$KEY" --num-threads=2 \
    --pid-file="$ROOT/munge/munged.pid" --log-file="$ROOT/munge/munged.log" \
    --seed-file="$ROOT/munge/munged.seed"
  wait_until 10 test -s "$ROOT/munge/munged.pid" || die "munged did not start; see $ROOT/munge/munged.log"
  cp "$ROOT/munge/munged.pid" "$RUN/munged.pid"
fi
wait_until 10 test -S "$SOCK" || die "munge socket $SOCK did not appear; see $ROOT/munge/munged.log"

# ----------------------------------------------------------------------------------- slurm.conf
# CPUs and sockets as slurmd detects them; memory leaves 512 MB to the system.
HW=$(slurmd -C | head -n1 | tr ' ' '\n' |
     grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')
MEM_MB=$(( $(free -m | awk '/^Mem:/ {print $2}') - 512 ))
NEW_CONF=$(cat <<EOF
# Written by scripts/slurm/start_local_slurm.sh: one node, no cgroups, no accounting database.
ClusterName=spo-local
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$ROOT/spool/slurmctld
SlurmdSpoolDir=$ROOT/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
# Containers and CI runners seldom allow cgroups.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Without accounting, Snakemake's slurm plugin reads job states from squeue, and trusts it only
# when finished jobs stay listed for >= 3 x its first status delay: keep them 10 minutes.
MinJobAge=600
KillWait=5
InactiveLimit=0
Waittime=0
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE ${HW}RealMemory=$MEM_MB Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
)
if [[ ! -f "$CONF" || "$(cat "$CONF")" != "$NEW_CONF" ]]; then
  if alive "$RUN/slurmctld.pid" || alive "$RUN/slurmd.pid"; then
    say "slurm.conf changed: restarting slurmctld and slurmd"
    bash "$(dirname "$0")/stop_local_slurm.sh" --slurm-only
  fi
  printf '%s\n' "$NEW_CONF" >"$CONF"
fi
# slurmd drops a GPU GRES without File= (the node then goes INVAL): give it a dummy device with
# the null device's numbers, or a plain file where mknod is not allowed.
[[ -e "$ROOT/dev/fakegpu0" ]] || mknod -m 0666 "$ROOT/dev/fakegpu0" c 1 3 2>/dev/null \
  || touch "$ROOT/dev/fakegpu0"
printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s\n' "$NODE" "$ROOT/dev/fakegpu0" \
  >"$ROOT/etc/gres.conf"
echo "export SLURM_CONF=$CONF" >"$ROOT/env.sh"
export SLURM_CONF="$CONF"

if [[ -e "$DEFAULT_CONF" && ! -L "$DEFAULT_CONF" ]]; then
  die "$DEFAULT_CONF exists and is not ours: this machine has its own SLURM; use that one"
fi
mkdir -p "$(dirname "$DEFAULT_CONF")"
ln -sfn "$CONF" "$DEFAULT_CONF"

# -------------------------------------------------------------------------------------- daemons
# Both daemonize and write their pid file a moment later.
if ! alive "$RUN/slurmctld.pid"; then
  say "starting slurmctld"
  slurmctld -f "$CONF" -i
  wait_until 15 alive "$RUN/slurmctld.pid" || die "slurmctld did not start; see $ROOT/log/slurmctld.log"
fi
if ! alive "$RUN/slurmd.pid"; then
  say "starting slurmd"
  slurmd -f "$CONF" -N "$NODE"
  wait_until 15 alive "$RUN/slurmd.pid" || die "slurmd did not start; see $ROOT/log/slurmd.log"
fi

# Only plain idle/mix/alloc is usable: "idle*" is a state restored from disk whose slurmd has not
# answered yet; down/drain/inval after a restart is resumed.
state=""
deadline=$((SECONDS + WAIT_S))
while ((SECONDS < deadline)); do
  alive "$RUN/slurmctld.pid" && alive "$RUN/slurmd.pid" || die "a slurm daemon died; see $ROOT/log/"
  state=$(timeout 5 sinfo -h -n "$NODE" -o '%t' 2>/dev/null | head -n1 || true)
  case "$state" in
    idle|mix|alloc) say "node $NODE is $state after $((SECONDS - t0)) s; source $ROOT/env.sh"; exit 0 ;;
    down*|drain*|inval*) timeout 5 scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.5
done
tail -n 20 "$ROOT/log/slurmctld.log" "$ROOT/log/slurmd.log" >&2 || true
die "node $NODE did not become idle in ${WAIT_S} s (last state '${state:-?}'); logs above"
