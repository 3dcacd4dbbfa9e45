#!/usr/bin/env bash
# start-cluster.sh — a throw-away Slurm 22.05 cluster on THIS machine for ftctl's tests.
#
# As root, no systemd, no cgroups (Debian 12 packages, installed with apt when missing):
#   munged (own key + socket) and slurmctld in the root namespace; NODES + GPU_NODES slurmd daemons
#   named node1..nodeN, each in its own network, UTS and mount namespace: own address on a private
#   bridge, own hostname, and a private /etc/hosts (bind-mounted) so node names resolve in jobs.
#   The namespaces have no default route: nothing a job does can leave the machine.
#
#   MEMCG=1: Slurm enforces each job's memory as a university cluster does (SelectTypeParameters=CR_Core_Memory,
#   TaskPlugin=task/cgroup, cgroup.conf ConstrainRAMSpace=yes): a job over its --mem is killed by its cgroup's
#   out-of-memory killer (slurmstepd: "Detected 1 oom-kill event(s) in StepId=..."; a batch step's: OUT_OF_MEMORY).
#   Needs cgroup v1's memory controller at /sys/fs/cgroup/memory. Each slurmd sees the cluster's own cgroup
#   (/sys/fs/cgroup/memory/ftctl-$NSP, bind-mounted on /sys/fs/cgroup/memory in its mount namespace), so two
#   such clusters' job_1 are not one cgroup. Default 0: no cgroups, memory counted but never enforced (CR_Core).
#
#   Partitions: "debug" (default) = node1..node$NODES, CPU only;
#               "gpu" = the GPU_NODES nodes after them, each with GPUS_PER_NODE stand-in GPUs of
#               type GPU_TYPE (char devices 1:3 = /dev/null; Slurm sets CUDA_VISIBLE_DEVICES).
#
# Idempotent: whatever an earlier run left under $BASE (daemons, namespaces, bridge) is stopped
# first, then a fresh cluster starts (~1-2 s when the packages are installed).
#
# Usage:  BASE=/tmp/ftctl-slurm-0 tests/slurm/start-cluster.sh
#         export SLURM_CONF=$BASE/etc/slurm.conf      # or: . $BASE/env
# Stop:   BASE=... tests/slurm/stop-cluster.sh        (same BR / NSP as at start)
#
# Several clusters may run side by side when each gets its own BASE, SUBNET, BR, NSP and CTL_PORT
# (tests/slurm_fixtures.py derives them from a slot number).
#
# Pitfalls this script works around (each found the hard way):
#  - `ip netns exec` remounts /sys and hides /sys/fs/cgroup; slurmd then dies ("Unable to initialize
#    cgroup plugin"). Use nsenter --net=/run/netns/X instead.
#  - munged refuses a socket directory that is not o+x; the key must be 0600.
#  - gres File= must name character devices (regular files: "is not a valid character or block
#    device"); gres.conf is read from the directory of slurm.conf.
#  - a requeued job may not start again until its old credential has expired on the node
#    (AuthInfo cred_expire, default 120 s: the BeginTime Slurm sets on requeue). Starting it earlier
#    (`scontrol update StartTime=now`) fails when it lands on the same node: "Killing non-startable
#    batch JobId=N: Job credential revoked", the job ends FAILED with exit 1. So cred_expire=5 here.
#  - without slurmdbd, plain `sacct` fails ("Slurm accounting storage is disabled"); `sacct -c`
#    reads the jobcomp/filetxt file, whose text format breaks on job names with spaces.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
NODES=${NODES:-2}
GPU_NODES=${GPU_NODES:-0}
GPUS_PER_NODE=${GPUS_PER_NODE:-2}
GPU_TYPE=${GPU_TYPE:-tiny}
BASE=${BASE:-/tmp/ftctl-slurm}
CTL_PORT=${CTL_PORT:-16817}
SLURMD_PORT=${SLURMD_PORT:-16818}      # every slurmd has its own address, so one port serves all
SUBNET=${SUBNET:-10.200.0}             # controller = $SUBNET.1, node i = $SUBNET.(10+i)
BR=${BR:-slrmbr0}                      # bridge name (<= 15 chars)
NSP=${NSP:-slrm-n}                     # namespace prefix: ${NSP}1, ${NSP}2, ...; veths ${NSP}v1, ...
CLUSTER=${CLUSTER:-ftctltest}
CRED_EXPIRE=${CRED_EXPIRE:-5}          # s; also how long a requeued job waits (Slurm's default: 120)
SKIP_INSTALL=${SKIP_INSTALL:-0}
MEMCG=${MEMCG:-0}
MEMCG_DIR=/sys/fs/cgroup/memory/ftctl-$NSP   # MEMCG=1: this cluster's own memory cgroup (NSP is per cluster)
export BASE BR NSP MEMCG_DIR

T0=$(date +%s%N)
log() { echo "[start-cluster +$(( ($(date +%s%N) - T0) / 1000000 ))ms] $*"; }
[ "$(id -u)" = 0 ] || { echo "start-cluster.sh: must run as root (network namespaces)" >&2; exit 1; }
ALL=$((NODES + GPU_NODES))
if [ "$MEMCG" = 1 ] && [ ! -w /sys/fs/cgroup/memory/cgroup.procs ]; then
  echo "start-cluster.sh: MEMCG=1 needs cgroup v1's memory controller mounted writable at /sys/fs/cgroup/memory" >&2
  exit 1
fi

# ---------------------------------------------------------------- 1. packages (~13 s, once)
missing=0
for c in slurmctld slurmd sbatch munged ip nsenter unshare; do command -v "$c" >/dev/null 2>&1 || missing=1; done
if [ "$missing" = 1 ]; then
  [ "$SKIP_INSTALL" = 1 ] && { echo "start-cluster.sh: slurm/munge not installed and SKIP_INSTALL=1" >&2; exit 1; }
  log "apt-get install slurmctld slurmd slurm-client munge iproute2 util-linux"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 \
      slurmctld slurmd slurm-client munge iproute2 util-linux >/dev/null
fi
log "$(slurmctld -V)"

# ---------------------------------------------------------------- 2. stale cluster -> stopped
"$HERE/stop-cluster.sh" >/dev/null 2>&1 || true
rm -rf "$BASE"
mkdir -p "$BASE"/{etc,state,spool,log,run,munge/run}
install -d -m 700 "$BASE/munge/etc"
chmod 755 "$BASE" "$BASE/munge" "$BASE/munge/run"   # munged: socket dir must be o+x

# ---------------------------------------------------------------- 3. munge (own key + socket)
MSOCK=$BASE/munge/run/munge.socket
head -c 1024 /dev/urandom > "$BASE/munge/etc/munge.key"
chmod 600 "$BASE/munge/etc/munge.key"
munged --key-file="$BASE/munge/etc/munge.key" --socket="$MSOCK" \
       --pid-file="$BASE/munge/run/munged.pid" --log-file="$BASE/log/munged.log" \
       --seed-file="$BASE/munge/munged.seed"
munge -S "$MSOCK" -n | unmunge -S "$MSOCK" >/dev/null
log "munged up"

# ---------------------------------------------------------------- 4. network (bridge + netns)
CTL_NAME=$(hostname -s)
CTL_IP=$SUBNET.1
ip link add "$BR" type bridge
ip addr add "$CTL_IP/24" dev "$BR"
ip link set "$BR" up
for i in $(seq 1 "$ALL"); do
  ns=$NSP$i
  ip netns add "$ns"
  ip link add "${NSP}v$i" type veth peer name eth0 netns "$ns"
  ip link set "${NSP}v$i" master "$BR"
  ip link set "${NSP}v$i" up
  ip -n "$ns" addr add "$SUBNET.$((10 + i))/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
done
{
  echo "127.0.0.1 localhost"
  echo "$CTL_IP $CTL_NAME"
  for i in $(seq 1 "$ALL"); do echo "$SUBNET.$((10 + i)) node$i"; done
} > "$BASE/etc/hosts"

# ---------------------------------------------------------------- 5. slurm.conf (+ gres.conf)
NCPU=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
NODE_MEM=$(( MEM_MB * 8 / 10 / ALL ))          # a bit under real memory, split between nodes
cat > "$BASE/etc/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$CTL_NAME($CTL_IP)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTL_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MSOCK,cred_expire=$CRED_EXPIRE
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/slurmd-%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# no systemd needed; cgroups only with MEMCG=1 (task/cgroup: each job's --mem is its memory cgroup's limit)
ProctrackType=proctrack/linuxproc
TaskPlugin=$([ "$MEMCG" = 1 ] && echo task/cgroup || echo task/none)
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.log
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
# a tiny cluster: schedule every 2 s (defaults 60 s / 30 s), so a requeued job starts again
# ~cred_expire + 2 s after the requeue, with no scontrol update StartTime=now
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=$([ "$MEMCG" = 1 ] && echo CR_Core_Memory || echo CR_Core)
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=600
EOF
if [ "$GPU_NODES" -gt 0 ]; then
  echo "GresTypes=gpu" >> "$BASE/etc/slurm.conf"
  mkdir -p "$BASE/dev"
  for g in $(seq 0 $((GPUS_PER_NODE - 1))); do mknod "$BASE/dev/nvidia$g" c 1 3; done
  : > "$BASE/etc/gres.conf"
fi
for i in $(seq 1 "$ALL"); do
  gres=""
  if [ "$i" -gt "$NODES" ]; then
    gres="Gres=gpu:$GPU_TYPE:$GPUS_PER_NODE"
    echo "NodeName=node$i Name=gpu Type=$GPU_TYPE File=$BASE/dev/nvidia[0-$((GPUS_PER_NODE - 1))]" >> "$BASE/etc/gres.conf"
  fi
  echo "NodeName=node$i NodeHostname=node$i NodeAddr=$SUBNET.$((10 + i)) CPUs=$NCPU RealMemory=$NODE_MEM $gres State=UNKNOWN" >> "$BASE/etc/slurm.conf"
done
echo "PartitionName=debug Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP" >> "$BASE/etc/slurm.conf"
[ "$GPU_NODES" -gt 0 ] && echo "PartitionName=gpu Nodes=node[$((NODES + 1))-$ALL] MaxTime=INFINITE State=UP" >> "$BASE/etc/slurm.conf"
if [ "$MEMCG" = 1 ]; then
  printf 'CgroupPlugin=cgroup/v1\nConstrainRAMSpace=yes\n' > "$BASE/etc/cgroup.conf"
  mkdir -p "$MEMCG_DIR"
fi
export SLURM_CONF=$BASE/etc/slurm.conf
echo "export SLURM_CONF=$SLURM_CONF" > "$BASE/env"

# ---------------------------------------------------------------- 6. daemons
slurmctld
for i in $(seq 1 "$ALL"); do
  mkdir -p "$BASE/spool/slurmd-node$i"
  # nsenter, NOT 'ip netns exec' (see the pitfalls above); private mount ns for /etc/hosts (and MEMCG's cgroup)
  own_cg=""
  [ "$MEMCG" = 1 ] && own_cg="mount --bind '$MEMCG_DIR' /sys/fs/cgroup/memory && "
  nsenter --net="/run/netns/$NSP$i" unshare --uts --mount -- \
      sh -c "mount --bind '$BASE/etc/hosts' /etc/hosts && $own_cg hostname node$i && exec slurmd -N node$i"
done
log "daemons started"

# ---------------------------------------------------------------- 7. wait until all nodes idle
idle=0
for _ in $(seq 1 300); do
  idle=$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l)
  [ "$idle" -ge "$ALL" ] && break
  sleep 0.2
done
[ "$idle" -ge "$ALL" ] || { sinfo -N >&2; echo "nodes did not become idle; see $BASE/log" >&2; exit 1; }
log "cluster up: $ALL node(s) idle.  export SLURM_CONF=$SLURM_CONF"
