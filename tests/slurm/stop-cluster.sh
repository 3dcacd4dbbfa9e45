#!/usr/bin/env bash
# stop-cluster.sh — stop what start-cluster.sh started under $BASE and remove its namespaces and
# bridge. Kills only processes named in $BASE's pid files and processes still inside the ${NSP}N
# namespaces (job steps left behind). Safe to run when nothing is running.
#   BASE=/tmp/ftctl-slurm-0 BR=... NSP=... tests/slurm/stop-cluster.sh
set -uo pipefail
BASE=${BASE:-/tmp/ftctl-slurm}
BR=${BR:-slrmbr0}
NSP=${NSP:-slrm-n}
export SLURM_CONF=$BASE/etc/slurm.conf

alive() {      # a zombie (killed, not yet reaped by whoever adopted the daemon) counts as gone
  local s
  s=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$s" ] && [ "${s#Z}" = "$s" ]
}
stop_pid() {   # stop_pid FILE: TERM, wait up to 1 s, then KILL (the state is thrown away anyway)
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 10); do alive "$pid" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
}

# 1. the namespaces' processes first (slurmd, slurmstepd, job steps): nothing to wait for
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${NSP}[0-9]+$"); do
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
done
# 2. daemons by pid file (slurmd pid files too, in case a slurmd escaped its namespace)
for f in "$BASE"/run/slurmd-*.pid; do [ -e "$f" ] && stop_pid "$f"; done
stop_pid "$BASE/run/slurmctld.pid"
stop_pid "$BASE/munge/run/munged.pid"
# 3. namespaces and bridge (deleting a netns removes its veth end, and so the pair)
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${NSP}[0-9]+$"); do
  ip netns del "$ns" 2>/dev/null
done
for v in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${NSP}v[0-9]+$"); do
  ip link del "$v" 2>/dev/null
done
ip link show "$BR" >/dev/null 2>&1 && ip link del "$BR"
# 4. MEMCG=1's memory cgroup of this cluster (start-cluster.sh), its jobs' empty cgroups under it, deepest first
MEMCG_DIR=/sys/fs/cgroup/memory/ftctl-$NSP
[ -d "$MEMCG_DIR" ] && find "$MEMCG_DIR" -depth -type d -exec rmdir {} + 2>/dev/null
echo "[stop-cluster] stopped cluster under $BASE"
