#!/usr/bin/env python3
"""A stand-in ``docker`` for a machine without a docker engine (this one): it records its argv and
runs the container's command as a local process, so the docker backend's own code goes end to end.

What it emulates, nothing more: ``run --detach --name N [--user UID:GID] [-v HOST:CTR[:ro]] [-e K[=V]] [-w DIR]
IMAGE CMD...`` (CMD runs here with container paths mapped back to their host paths, output to a log, and, run as
root, as --user's uid or else the image's USER, ``$FAKE_IMAGE_USER``), ``inspect --format ... N``
(created/running/exited and the exit code), ``logs [--follow] [--tail N] N``, ``stop [--time S] N`` (SIGTERM to
the process group, SIGKILL after S seconds), ``rm N``, ``version`` and ``info --format '{{json .}}'`` (a daemon's:
its runtimes are runc and ``$FAKE_DOCKER_RUNTIMES``, comma-separated; with ``$FAKE_DOCKER_DAEMON_DOWN`` set every
verb fails, as a CLI without its daemon does). The image is ignored: the command runs with this machine's python
(first on PATH). State lives in ``$FAKE_DOCKER_STATE``; each call is appended to ``$FAKE_LOG`` as JSON.

The container's environment is what a docker engine gives it, not this process's: the image's (``PATH``, this
machine's, whose python stands in for the image's; ``$FAKE_IMAGE_ENV``, JSON, for more), docker's own (HOSTNAME,
HOME=/), then ``-e NAME=VALUE`` and ``-e NAME`` (the value of NAME here, where it is set) in order. So what the
docker backend does not pass by name is not there, as in a real container.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_DOCKER_STATE"])
TAKES_VALUE = {
    "--name",
    "--user",
    "-u",
    "-v",
    "--volume",
    "-e",
    "--env",
    "-w",
    "--workdir",
    "--ulimit",
    "--gpus",
    "--time",
    "-t",
    "--format",
    "-f",
    "--tail",
}


def log_call(args):
    if os.environ.get("FAKE_LOG"):
        with open(os.environ["FAKE_LOG"], "a") as fh:
            fh.write(json.dumps({"prog": "docker", "argv": args}) + "\n")


def parse(args):
    opts, i = [], 0
    while i < len(args) and args[i].startswith("-"):
        a = args[i]
        if a in TAKES_VALUE:
            opts.append((a, args[i + 1]))
            i += 2
        else:
            key, _, val = a.partition("=")
            opts.append((key, val))
            i += 1
    return opts, args[i:]


def state(name):
    d = STATE / name
    if not d.is_dir():
        return None
    pid = int((d / "pid").read_text())
    rc = d / "rc"
    if rc.exists():
        return "exited", int(rc.read_text())
    try:
        os.kill(pid, 0)
        return "running", 0
    except ProcessLookupError:
        return "exited", 137


def container_env(pairs, name):
    """The container's environment: the image's, docker's own, then each -e in order (as dockerd builds it)."""
    env = {"PATH": os.environ["PATH"], **json.loads(os.environ.get("FAKE_IMAGE_ENV") or "{}")}
    env.update(HOSTNAME=name[:12], HOME="/")
    for pair in pairs:
        key, eq, val = pair.partition("=")
        if eq:
            env[key] = val
        elif key in os.environ:  # -e NAME: the CLI's own value, and nothing where it has none
            env[key] = os.environ[key]
    return env


def main(args):
    log_call(args)
    cmd, rest = args[0], args[1:]
    opts, pos = parse(rest)
    if os.environ.get("FAKE_DOCKER_DAEMON_DOWN"):  # the CLI installed, its daemon not running: every verb fails
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?")
        return 1
    if cmd == "version":
        print("27.3.1")
        return 0
    if cmd == "info":
        runtimes = ["runc", *filter(None, os.environ.get("FAKE_DOCKER_RUNTIMES", "").split(","))]
        info = {"ServerVersion": "27.3.1", "Runtimes": {r: {"path": r} for r in runtimes}, "CDISpecDirs": []}
        print(json.dumps(info))
        return 0
    if cmd == "run":
        name = dict(opts)["--name"]
        mounts = [v.split(":")[:2] for k, v in opts if k in ("-v", "--volume")]
        env = container_env([v for k, v in opts if k in ("-e", "--env")], name)
        workdir = dict(opts).get("-w", "/")

        def host(p):
            for h, c in mounts:
                if p == c or p.startswith(c + "/"):
                    return h + p[len(c) :]
            return p

        for key in [k for k, v in env.items() if isinstance(v, str) and v.startswith("/")]:
            env[key] = host(env[key])
        # the container's user: --user, else the image's USER (FAKE_IMAGE_USER), as docker runs it
        user = dict(opts).get("--user") or dict(opts).get("-u") or os.environ.get("FAKE_IMAGE_USER")
        uid, _, gid = (user or "").partition(":")
        as_user = {"user": int(uid), "group": int(gid or uid), "extra_groups": []} if user and os.getuid() == 0 else {}
        argv = [host(a) for a in pos[1:]]
        d = STATE / name
        if d.exists():
            print(f'Conflict. The container name "/{name}" is already in use', file=sys.stderr)
            return 125
        d.mkdir(parents=True)
        out = open(d / "log", "w")
        wrapper = [
            sys.executable,
            "-c",
            "import subprocess,sys; rc=subprocess.call(sys.argv[2:]); open(sys.argv[1],'w').write(str(rc))",
            str(d / "rc"),
            *argv,
        ]
        proc = subprocess.Popen(
            wrapper,
            cwd=host(workdir),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **as_user,
        )
        (d / "pid").write_text(str(proc.pid))
        print(name)
        return 0
    name = pos[-1] if pos else ""
    st = state(name)
    if st is None:
        print(f"Error: No such container: {name}", file=sys.stderr)
        return 1
    if cmd == "inspect":
        print(f"{st[0]} {st[1]}")
    elif cmd == "logs":
        path, pos_ = STATE / name / "log", 0
        if "--tail" in dict(opts):  # the last N lines, then (with --follow) what comes
            data, n = path.read_bytes(), int(dict(opts)["--tail"])
            pos_ = len(data) - sum(len(line) for line in (data.splitlines(keepends=True)[-n:] if n else []))
        while True:
            data = path.read_bytes()
            sys.stdout.write(data[pos_:].decode(errors="replace"))
            sys.stdout.flush()
            pos_ = len(data)
            if "--follow" not in dict(opts) or state(name)[0] == "exited":
                if "--follow" in dict(opts):
                    sys.stdout.write(path.read_bytes()[pos_:].decode(errors="replace"))
                break
            time.sleep(0.2)
    elif cmd == "stop":
        pid = int((STATE / name / "pid").read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.time() + float(dict(opts).get("--time", 10))
        while state(name)[0] == "running" and time.time() < deadline:
            time.sleep(0.2)
        if state(name)[0] == "running":
            os.killpg(pid, signal.SIGKILL)
        print(name)
    elif cmd == "rm":
        import shutil

        shutil.rmtree(STATE / name)
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
