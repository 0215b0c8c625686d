#!/usr/bin/env bash
# A one-node SLURM on this machine, to run sweeps through the real sbatch/squeue (tests, CI and trials):
#   scripts/local_slurm.sh install    # install Debian's slurm-wlm and munge if they are missing
#   scripts/local_slurm.sh configure  # write the one-node slurm.conf, unless one is there that this script did not write
#   scripts/local_slurm.sh start      # install, configure, start munged, slurmctld and slurmd
#   scripts/local_slurm.sh stop       # stop the daemons this script started (by their pid files), nothing else
# Needs root (or sudo) and Debian's packages. Idempotent: start on a running SLURM and stop on a stopped one
# do nothing. An existing slurm.conf without this script's first line is kept as it is. No accounting database:
# sacct fails, and sweep.py reads squeue and its own state files instead. LOCAL_SLURM_CONF names another conf path.
set -euo pipefail
STATE=/run/hardness-local-slurm          # which daemons this script started
CONF=${LOCAL_SLURM_CONF:-/etc/slurm/slurm.conf}
MARK="# written by scripts/local_slurm.sh"
export SLURM_CONF="$CONF"                # the daemons and commands started here read it
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo > /dev/null || { echo "error: local_slurm.sh needs root or sudo" >&2; exit 1; }
  SUDO=sudo
fi

running() { [ -f "$1" ] && $SUDO kill -0 "$(cat "$1")" 2> /dev/null; }

start_daemon() {  # name, pid file, command...
  local name=$1 pidfile=$2; shift 2
  if running "$pidfile"; then return; fi
  $SUDO "$@"
  for _ in $(seq 50); do running "$pidfile" && break; sleep 0.1; done
  running "$pidfile" || { echo "error: $name did not start; see /var/log/slurm/ and /var/log/munge/" >&2; exit 1; }
  $SUDO mkdir -p "$STATE"
  echo "$pidfile" | $SUDO tee "$STATE/$name" > /dev/null
}

install() {
  if command -v slurmctld > /dev/null && command -v munged > /dev/null; then return; fi
  if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge > /dev/null; then
    $SUDO apt-get update -q > /dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge > /dev/null
  fi
}

configure() {
  if [ -s "$CONF" ] && [ "$(head -n 1 "$CONF")" != "$MARK: one node, one partition, no accounting" ]; then
    echo "keeping $CONF: local_slurm.sh did not write it"
    return
  fi
  local host cpus memory
  host=$(hostname -s)
  cpus=$(nproc)
  memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  $SUDO mkdir -p "$(dirname "$CONF")"
  $SUDO tee "$CONF" > /dev/null <<CONFIG
$MARK: one node, one partition, no accounting
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DependencyParameters=kill_invalid_depend
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONFIG
}

start() {
  install
  if [ ! -s /etc/munge/munge.key ]; then
    $SUDO mkdir -p /etc/munge
    $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    $SUDO chown munge:munge /etc/munge/munge.key
    $SUDO chmod 400 /etc/munge/munge.key
  fi
  $SUDO mkdir -p /run/munge /var/log/munge /var/lib/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /etc/slurm
  $SUDO chown munge:munge /run/munge /var/log/munge /var/lib/munge
  configure
  start_daemon munged /run/munge/munged.pid runuser -u munge -- munged
  start_daemon slurmctld /run/slurmctld.pid slurmctld
  start_daemon slurmd /run/slurmd.pid slurmd
  for _ in $(seq 100); do
    if srun --quiet --time=1 hostname > /dev/null 2>&1; then echo "local SLURM is up: $(sinfo --noheader | head -1)"; return; fi
    sleep 0.2
  done
  echo "error: SLURM started but srun does not answer; see /var/log/slurm/" >&2
  exit 1
}

stop() {
  for name in slurmd slurmctld munged; do
    [ -f "$STATE/$name" ] || continue
    pidfile=$(cat "$STATE/$name")
    if running "$pidfile"; then $SUDO kill "$(cat "$pidfile")"; fi
    $SUDO rm -f "$STATE/$name"
  done
  echo "stopped the daemons local_slurm.sh had started"
}

case "${1:-}" in
  install) install ;;
  configure) configure ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|configure|start|stop" >&2; exit 2 ;;
esac
