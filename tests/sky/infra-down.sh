#!/usr/bin/env bash
# infra-down.sh — undo infra-up.sh (same environment): cancel managed jobs, tear down every SkyPilot
# cluster, stop the API server and the helpers it left (by PID: processes whose HOME is this client's),
# close SkyPilot's SSH ControlMaster sockets, stop sshd (pid file), unmount the node-local runtime dirs.
# ~root's files and /tmp leftovers are restored/removed by the fixture (tests/sky_fixtures.py).
set -uo pipefail
: "${BASE:?}" "${SLURM_BASE:?}" "${NODES:?}"
if [ -f "$BASE/env.sh" ]; then
  (
    # shellcheck disable=SC1091
    . "$BASE/env.sh"
    if sky api status >/dev/null 2>&1; then
      timeout 60 sky jobs cancel -a -y >/dev/null 2>&1
      timeout 120 sky down -a -y 2>&1 | tail -1
      timeout 60 sky api stop 2>&1 | tail -1
    fi
  )
fi
# helpers SkyPilot started for this client (API server workers, log daemons), found by their HOME
for p in $(ls /proc | grep -E '^[0-9]+$'); do
  [ "$p" = $$ ] && continue
  { tr '\0' '\n' < "/proc/$p/environ"; } 2>/dev/null | grep -qx "HOME=$BASE/client" && kill "$p" 2>/dev/null
done
for s in /tmp/sky_ssh_*/*/*; do [ -S "$s" ] && ssh -o ControlPath="$s" -O exit x >/dev/null 2>&1; done
[ -s "$BASE/sshd/sshd.pid" ] && kill "$(cat "$BASE/sshd/sshd.pid")" 2>/dev/null
for i in $(seq 1 "$NODES"); do
  pid=$(cat "$SLURM_BASE/run/slurmd-node$i.pid" 2>/dev/null) && nsenter -t "$pid" -m umount "$BASE/rt" 2>/dev/null
done
# Slurm jobs SkyPilot left (its clusters are sbatch allocations) must not hold the nodes for later tests
SLURM_CONF=$SLURM_BASE/etc/slurm.conf scancel --user=root 2>/dev/null
echo "[sky infra-down] done"
