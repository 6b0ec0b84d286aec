#!/usr/bin/env bash
# Start a throw-away single-node SLURM (Debian 12: slurm-wlm 22.05 + munge), run one command
# against it, then stop every daemon this script started, by PID. Used by tests/test_slurm.py.
#
#   usage: bash tests/slurm/local-slurm.sh <command> [args...]
#   e.g.   bash tests/slurm/local-slurm.sh snakemake --profile profiles/slurm-ci data
#
# Needs root (CI runs as root). No systemd, no cgroups, no slurmdbd (so no sacct history: the
# slurm-ci profile checks job status with squeue, and MinJobAge keeps finished jobs visible).
# Exit status: the command's; 3 when the packages cannot be installed; 4 when SLURM does not
# come up; 124 when the command ran past the hard timeout.
# Env knobs:
#   LOCAL_SLURM_TIMEOUT  hard limit in seconds for the command (default 1800): CI can never hang
#   LOCAL_SLURM_DIR      state dir (default: a fresh mktemp dir); LOCAL_SLURM_KEEP=1 keeps it
set -euo pipefail

TIMEOUT=${LOCAL_SLURM_TIMEOUT:-1800}
[ "$#" -ge 1 ] || { echo "usage: $0 <command> [args...]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "local-slurm.sh: needs root (slurmd runs jobs as root here)" >&2; exit 2; }

# 1. packages, only when missing (apt-get update first: a fresh container has no lists)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  echo "local-slurm.sh: installing slurmctld slurmd slurm-client munge" >&2
  if ! { timeout 300 apt-get update -qq \
         && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq \
              --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }; then
    echo "local-slurm.sh: could not install the SLURM packages with apt-get" >&2
    exit 3
  fi
fi

BASE=${LOCAL_SLURM_DIR:-$(mktemp -d /tmp/local-slurm.XXXXXX)}
mkdir -p "$BASE"/{munge,state,spool,log,bin}
chmod 711 "$BASE/munge"   # munged wants execute permission on its socket's folder

PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # the command first (timeout passes the signal on to it), when it is still running
  if [ -n "${CMD:-}" ] && kill -0 "$CMD" 2>/dev/null; then
    kill "$CMD" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$CMD" 2>/dev/null || break; sleep 0.1; done
  fi
  # jobs still running in this private cluster would outlive slurmd (slurmstepd is separate)
  if [ -n "${SLURM_CONF:-}" ] && [ "${#PIDS[@]}" -ge 3 ]; then
    timeout 10 scancel --full --quiet --user=root 2>/dev/null || true
    for _ in $(seq 1 20); do
      [ -z "$(timeout 5 squeue -h -t R,CG -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  # stop in reverse order (slurmd, slurmctld, munged), only the processes started here
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[$i]}" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ "$rc" != 0 ] && [ -d "$BASE/log" ]; then
    echo "local-slurm.sh: exit $rc; last lines of the SLURM logs:" >&2
    tail -n 15 "$BASE"/log/*.log >&2 2>/dev/null || true
  fi
  [ "${LOCAL_SLURM_KEEP:-0}" = 1 ] || rm -rf "$BASE"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free TCP ports, so that two throw-away clusters (or a real slurmctld) never collide
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
CTLD_PORT=$(free_port)
SLURMD_PORT=$(free_port)
while [ "$SLURMD_PORT" = "$CTLD_PORT" ]; do SLURMD_PORT=$(free_port); done

# 2. munge, with key, socket, pid and log inside $BASE
mungekey --create --keyfile="$BASE/munge/munge.key" --force
chmod 400 "$BASE/munge/munge.key"
munged --force --foreground \
  --key-file="$BASE/munge/munge.key" --socket="$BASE/munge/munge.socket" \
  --pid-file="$BASE/munge/munged.pid" --seed-file="$BASE/munge/munged.seed" \
  --log-file="$BASE/munge/munged.log" >"$BASE/log/munged.stdout" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do [ -S "$BASE/munge/munge.socket" ] && break; sleep 0.1; done

# 3. slurm.conf for one node called localhost, every path inside $BASE
CPUS=$(nproc)
MEM=$(( $(free -m | awk '/^Mem:/{print $2}') - 2048 ))
cat > "$BASE/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=localhost
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$BASE/munge/munge.socket
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# finished jobs stay visible to squeue: the plugin trusts squeue only if MinJobAge >= 3 x the
# seconds before its first status check
MinJobAge=3600
DefMemPerCPU=1000
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$BASE/slurm.conf"

# 4. daemons in the foreground, backgrounded here so that their PIDs are known
slurmctld -D -c -f "$SLURM_CONF" >"$BASE/log/slurmctld.stdout" 2>&1 &
PIDS+=($!)
slurmd -D -N localhost -f "$SLURM_CONF" >"$BASE/log/slurmd.stdout" 2>&1 &
PIDS+=($!)
for i in $(seq 1 100); do
  timeout 5 sinfo -h -o %T 2>/dev/null | grep -qx idle && break
  if [ "$i" = 100 ]; then echo "local-slurm.sh: SLURM did not come up" >&2; exit 4; fi
  sleep 0.3
done

# 5. snakemake-executor-plugin-slurm-jobstep drops every SLURM_* variable (SLURM_CONF too)
#    before its nested `srun`; a wrapper first on PATH restores it.
cat > "$BASE/bin/srun" <<EOF
#!/bin/sh
export SLURM_CONF="$SLURM_CONF"
exec /usr/bin/srun "\$@"
EOF
chmod +x "$BASE/bin/srun"
export PATH="$BASE/bin:$PATH"

echo "local-slurm.sh: single-node SLURM up in $BASE (ports $CTLD_PORT/$SLURMD_PORT)" >&2
sinfo >&2
# the command runs in the background so that the INT/TERM traps fire while it runs
timeout --kill-after=30 "$TIMEOUT" "$@" &
CMD=$!
rc=0
wait "$CMD" || rc=$?
[ "$rc" = 124 ] && echo "local-slurm.sh: the command ran past ${TIMEOUT}s and was stopped" >&2
exit "$rc"
