#!/usr/bin/env bash
# infra-up.sh — SkyPilot's own Slurm infra on the tests' running Slurm cluster (tests/slurm/start-cluster.sh),
# offline, as root: an sshd "login node" on 127.0.0.1:$SSH_PORT, a node-local runtime directory in each
# slurmd's mount namespace, the client's SkyPilot config (HOME=$BASE/client), `sky api start` and
# `sky check slurm`. Adapted from the reference recipe (shared/reference/sky-launch/up.sh); undo with
# infra-down.sh (same environment), which the fixture always runs.
#
# What SkyPilot needs on the nodes, and the offline substitute for each (details in that recipe):
#   uv at $HOME/.local/bin/uv, else `curl astral.sh/uv/install.sh | sh`  -> a curl shim that copies $UV;
#   Python 3.10 for `uv venv --python 3.10`                          -> $PY310 on PATH, no downloads;
#   `uv pip install skypilot[slurm,remote]` on nodes without network -> UV_OFFLINE=1 UV_FIND_LINKS=$WHEELHOUSE;
#   a node-local tmpdir                                              -> $BASE/rt bind-mounted per slurmd.
# The nodes' "image" is the trainer environment: $BASE/trainer-bin (torchrun only) on their PATH.
#
# Side effects outside $BASE (the fixture saves and restores them): SkyPilot writes into the SSH user's
# passwd home (~root/.ssh/authorized_keys, ~root/.ssh/skypilot_host_key*, ~root/.sky_ssh_rc, one line in
# ~root/.bashrc); /tmp/uv_cache_0, /tmp/sky_ssh_*, /tmp/sky_app_*, /tmp/sky_setup_*, /tmp/sky-tmp*.
#
# Environment: BASE SLURM_BASE CLUSTER NODES SSH_PORT API_PORT SKY_BIN (bin dir of the SkyPilot venv)
#              TRAINER_BIN (bin dir holding torchrun) PY310 (dir holding python3.10) UV WHEELHOUSE CATALOG SITE
set -euo pipefail
: "${BASE:?}" "${SLURM_BASE:?}" "${CLUSTER:?}" "${NODES:?}" "${SSH_PORT:?}" "${API_PORT:?}" "${SKY_BIN:?}"
: "${TRAINER_BIN:?}" "${PY310:?}" "${UV:?}" "${WHEELHOUSE:?}" "${CATALOG:?}" "${SITE:?}"
T0=$(date +%s)
log() { echo "[sky infra-up +$(( $(date +%s) - T0 ))s] $*"; }

mkdir -p "$BASE"/{sshd,home/.local/bin,client/.slurm,client/.sky/catalogs,rt,shim,trainer-bin}
cp "$UV" "$BASE/home/.local/bin/uv"
ln -sf "$TRAINER_BIN/torchrun" "$BASE/trainer-bin/torchrun"
cp -r "$CATALOG" "$BASE/client/.sky/catalogs/v8"

cat > "$BASE/shim/curl" <<EOF
#!/bin/sh
case "\$*" in
  *astral.sh/uv/install.sh*)
    echo 'mkdir -p "\${UV_INSTALL_DIR:-\$HOME/.local/bin}" && cp "$BASE/home/.local/bin/uv" "\${UV_INSTALL_DIR:-\$HOME/.local/bin}/uv"'
    exit 0 ;;
esac
exec /usr/bin/curl "\$@"
EOF
chmod +x "$BASE/shim/curl"

# a node-local $BASE/rt inside each slurmd's mount namespace (the nodes share this machine's filesystem)
for i in $(seq 1 "$NODES"); do
  mkdir -p "$BASE/nodetmp/node$i"
  nsenter -t "$(cat "$SLURM_BASE/run/slurmd-node$i.pid")" -m mount --bind "$BASE/nodetmp/node$i" "$BASE/rt"
done

# the login node: sshd on 127.0.0.1, key only; its login shell (bash --login, read by SkyPilot) gets the env
ssh-keygen -q -t ed25519 -N '' -f "$BASE/sshd/id_ed25519" <<<y >/dev/null 2>&1 || true
cp "$BASE/sshd/id_ed25519.pub" "$BASE/sshd/authorized_keys"
[ -f "$BASE/sshd/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$BASE/sshd/host_ed25519"
NODE_PATH="$BASE/shim:$PY310:$BASE/trainer-bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
NODE_ENV="SLURM_CONF=$SLURM_BASE/etc/slurm.conf SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt UV_PYTHON_DOWNLOADS=never UV_OFFLINE=1 UV_FIND_LINKS=$WHEELHOUSE"
cat > "$BASE/sshd/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $BASE/sshd/host_ed25519
PidFile $BASE/sshd/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile $BASE/sshd/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxSessions 100
MaxStartups 100:30:200
Subsystem sftp /usr/lib/openssh/sftp-server
SetEnv HOME=$BASE/home PATH=$NODE_PATH $NODE_ENV
EOF
cat > "$BASE/home/.profile" <<EOF
# read by SkyPilot's \`bash --login -c\` on the login node; srun passes this env on to the nodes
export PATH=$NODE_PATH
export $NODE_ENV
EOF
mkdir -p /run/sshd
/usr/sbin/sshd -f "$BASE/sshd/sshd_config" -E "$BASE/sshd/sshd.log"
for _ in $(seq 1 25); do [ -s "$BASE/sshd/sshd.pid" ] && break; sleep 0.2; done

cat > "$BASE/client/.slurm/config" <<EOF
Host $CLUSTER
  HostName 127.0.0.1
  Port $SSH_PORT
  User root
  IdentityFile $BASE/sshd/id_ed25519
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
EOF
cat > "$BASE/client/.sky/config.yaml" <<EOF
slurm:
  cluster_configs:
    $CLUSTER:
      workdir: $BASE/home
      tmpdir: $BASE/rt
jobs:
  controller:
    consolidation_mode: true
EOF
cat > "$BASE/env.sh" <<EOF
export HOME=$BASE/client SKYPILOT_DISABLE_USAGE_COLLECTION=1 PATH=$SKY_BIN:\$PATH
# the API server (and the jobs controller inside it) carries the test-only patches of sitecustomize.py
export PYTHONPATH=$SITE FTCTL_TEST_SKY_OFFLINE=1
export SKYPILOT_API_SERVER_LOCAL_PORT=$API_PORT SKYPILOT_API_SERVER_ENDPOINT=http://127.0.0.1:$API_PORT
EOF
# shellcheck disable=SC1091
. "$BASE/env.sh"
log "sky api start"; sky api start 2>&1 | grep -E 'started|rror' || true
log "sky check slurm"; sky check slurm 2>&1 | grep -E "Slurm|$CLUSTER" | head -3
log "ready"
