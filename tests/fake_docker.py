#!/usr/bin/env python3
"""A stand-in ``docker`` for a machine without a docker engine (this one): it records its argv and
runs the container's command as a local process, so the docker backend's own code goes end to end.

What it emulates, nothing more: ``run --detach --name N [--user UID:GID] [-v HOST:CTR[:ro]] [-e K[=V]] [-w DIR]
IMAGE CMD...`` (CMD runs here with container paths mapped back to their host paths, output to a log, and, run as
root, as --user's uid or else the image's USER, ``$FAKE_IMAGE_USER``), ``inspect --format ... N``
(its ``.State.Status``: created/running/exited, ``.State.ExitCode``: 128+N for a command a signal N ended,
``.State.StartedAt`` and ``.State.FinishedAt`` in docker's RFC 3339 form, its zero time for never), ``logs [--follow] [--tail N] N``,
``context inspect --format '{{json .}}'`` (the current context: ``$DOCKER_CONTEXT`` among ``$FAKE_DOCKER_CONTEXTS``, JSON
{name: endpoint}, else "default", its endpoint ``$DOCKER_HOST`` where set), ``stop [--time S] N`` (SIGTERM to the command, the container's PID 1, which ignores it without a handler of its
own as a container's init does, unless ``run --init`` made an init its PID 1, which forwards it to the command;
SIGKILL to all of its processes after S seconds), ``kill N`` (SIGKILL to all of
them at once), ``rm N``, ``version`` and ``info
--format '{{json .}}'`` (a daemon's: its runtimes are runc and ``$FAKE_DOCKER_RUNTIMES``, comma-separated; with
``$FAKE_DOCKER_CDI``, comma-separated
CDI device names, its CDI spec dirs and, unless ``$FAKE_DOCKER_CDI_LISTED=0`` (an older daemon), DiscoveredDevices; with
``$FAKE_DOCKER_DAEMON_DOWN`` set every verb but ``context`` fails, as a CLI without its daemon does); ``create`` (run's
options, the container made and not started: "created"), ``start N``, ``cp [--archive] - N:/`` (a tar on stdin unpacked
into the container's own file system, ``$FAKE_DOCKER_STATE/N/root``, its members listed in ``N/copied.json``) and ``cp
N:PATH -`` (a tar of that file or directory on stdout). A container that was copied into sees its own file system: a
path of its command, working directory or ``-e`` value that no mount holds is its root's. The image is ignored: the command runs with this machine's python
(first on PATH). State lives in ``$FAKE_DOCKER_STATE``; each call is appended to ``$FAKE_LOG`` as JSON (its argv, and
"at": its DOCKER_HOST and DOCKER_CONTEXT where set).

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
            # where the CLI was pointed (DOCKER_HOST, DOCKER_CONTEXT), where it was
            at = {k: os.environ[k] for k in ("DOCKER_HOST", "DOCKER_CONTEXT") if os.environ.get(k)}
            fh.write(json.dumps({"prog": "docker", "argv": args, **({"at": at} if at else {})}) + "\n")


def parse(args):
    opts, i = [], 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-":  # "-": stdin or stdout (cp)
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
    if not (d / "pid").exists():
        return "created", 0
    pid = int((d / "pid").read_text())
    rc = d / "rc"
    if rc.exists():
        return "exited", int(rc.read_text())
    try:
        zombie = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # dead, and no init reaps it
    except OSError:
        zombie = True
    return ("exited", 137) if zombie else ("running", 0)


ZERO_TIME = "0001-01-01T00:00:00Z"  # docker's "never"


def rfc3339(unix):
    """A Unix time as docker prints one: 2026-12-04T10:11:12.123456789Z."""
    ns = round(unix * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def inspected(fmt, name, st):
    """``inspect --format FMT``'s line: the State fields it names, as docker fills them in."""
    d = STATE / name
    rc = d / "rc"
    fields = {
        "Status": st[0],
        "ExitCode": str(st[1]),
        "StartedAt": rfc3339(float((d / "started").read_text())) if (d / "started").exists() else ZERO_TIME,
        "FinishedAt": rfc3339(rc.stat().st_mtime) if rc.exists() else ZERO_TIME,
    }
    for key, value in fields.items():
        fmt = fmt.replace("{{.State." + key + "}}", value)
    return fmt


def catches(pid, sig):
    """Whether process ``pid`` has a handler of its own for ``sig`` (the kernel delivers a signal from outside a
    container to its PID 1 only then)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) >> (sig - 1) & 1)


def descendants(pid):
    """``pid`` and every process it started, and they started (a container's processes)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


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


def start(name):
    """Start the container ``name`` made by ``create``: its command runs here, paths mapped to their host paths
    (a mount's; else, for a container copied into, its own file system's)."""
    d = STATE / name
    config = json.loads((d / "config.json").read_text())
    opts, pos, env = [tuple(o) for o in config["opts"]], config["pos"], config["env"]
    mounts = [v.split(":")[:2] for k, v in opts if k in ("-v", "--volume")]
    workdir = dict(opts).get("-w", "/")
    root = d / "root"

    def host(p):
        for h, c in mounts:
            if p == c or p.startswith(c + "/"):
                return h + p[len(c) :]
        if root.is_dir() and p.startswith("/") and not p.startswith(sys.prefix) and not p.startswith(sys.base_prefix):
            return str(root) + p  # the container's own file system (the python of the image stands in: not mapped)
        return p

    for key in [k for k, v in env.items() if isinstance(v, str) and v.startswith("/") and k != "PATH"]:
        env[key] = host(env[key])
    # the container's user: --user, else the image's USER (FAKE_IMAGE_USER), as docker runs it
    user = dict(opts).get("--user") or dict(opts).get("-u") or os.environ.get("FAKE_IMAGE_USER")
    uid, _, gid = (user or "").partition(":")
    as_user = {"user": int(uid), "group": int(gid or uid), "extra_groups": []} if user and os.getuid() == 0 else {}
    argv = [host(a) for a in pos[1:]]
    (d / "started").write_text(repr(time.time()))
    out = open(d / "log", "w")
    wrapper = [  # runs the command, notes its pid (the container's PID 1), then its exit code as docker says it
        sys.executable,
        "-c",
        # each file written aside and renamed: `state` polled rc as it was created, read '' (int: ValueError)
        "import os,subprocess,sys\n"
        "def put(path, text):\n"
        "    open(path + '.tmp', 'w').write(text); os.replace(path + '.tmp', path)\n"
        "p=subprocess.Popen(sys.argv[3:]); put(sys.argv[2], str(p.pid))\n"
        "rc=p.wait(); put(sys.argv[1], str(128-rc if rc<0 else rc))",
        str(d / "rc"),
        str(d / "init"),
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


def main(args):
    log_call(args)
    cmd, rest = args[0], args[1:]
    opts, pos = parse(rest)
    if cmd == "context" and pos[:1] == ["inspect"]:  # the CLI's own (no daemon asked): DOCKER_HOST, else the context's
        name = os.environ.get("DOCKER_CONTEXT") or "default"
        contexts = {
            "default": "unix:///var/run/docker.sock",
            **json.loads(os.environ.get("FAKE_DOCKER_CONTEXTS") or "{}"),
        }
        if name not in contexts:
            print(f'context "{name}": context not found', file=sys.stderr)
            return 1
        host = os.environ.get("DOCKER_HOST") or contexts[name]
        print(json.dumps({"Name": name, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}}}))
        return 0
    if os.environ.get("FAKE_DOCKER_DAEMON_DOWN"):  # the CLI installed, its daemon not running: every verb fails
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?")
        return 1
    if cmd == "version":
        print("27.3.1")
        return 0
    if cmd == "info":
        runtimes = ["runc", *filter(None, os.environ.get("FAKE_DOCKER_RUNTIMES", "").split(","))]
        info = {"ServerVersion": "27.3.1", "Runtimes": {r: {"path": r} for r in runtimes}, "CDISpecDirs": []}
        if "FAKE_DOCKER_CDI" in os.environ:  # a newer daemon's CDI: its spec dirs and the devices it found there
            devices = list(filter(None, os.environ["FAKE_DOCKER_CDI"].split(",")))
            info["CDISpecDirs"] = ["/etc/cdi", "/var/run/cdi"]
            if os.environ.get("FAKE_DOCKER_CDI_LISTED", "1") == "1":
                info["DiscoveredDevices"] = [{"Source": "cdi", "ID": d} for d in devices]
        print(json.dumps(info))
        return 0
    if cmd in ("run", "create"):
        name = dict(opts)["--name"]
        d = STATE / name
        if d.exists():
            print(f'Conflict. The container name "/{name}" is already in use', file=sys.stderr)
            return 125
        d.mkdir(parents=True)
        # what the container runs, with the -e NAME values of this (the CLI's) environment, as docker keeps them
        env = container_env([v for k, v in opts if k in ("-e", "--env")], name)
        (d / "config.json").write_text(json.dumps({"opts": opts, "pos": pos, "env": env}))
        if cmd == "create":
            print(name)
            return 0
        return start(name)
    if cmd == "cp" and pos[:1] == ["-"]:  # a tar from stdin, unpacked at PATH of the container's own file system
        import tarfile

        name, _, inside = pos[1].partition(":")
        if state(name) is None:
            print(f"Error: No such container: {name}", file=sys.stderr)
            return 1
        root = STATE / name / "root"
        with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
            members = []
            for member in tar:
                members.append(
                    {"name": member.name, "uid": member.uid, "gid": member.gid, "type": member.type.decode()}
                )
                tar.extract(member, root / inside.lstrip("/"), set_attrs=False)
        (STATE / name / "copied.json").write_text(json.dumps(members))
        return 0
    if cmd == "cp" and pos[-1:] == ["-"]:  # a file or directory of the container's file system, a tar on stdout
        import tarfile

        name, _, inside = pos[0].partition(":")
        found = STATE / name / "root" / inside.lstrip("/")
        if state(name) is None or not found.exists():
            print(f"Error: Could not find the file {inside} in container {name}", file=sys.stderr)
            return 1
        with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tar:
            tar.add(found, arcname=found.name)
        return 0
    if cmd == "start":
        if state(pos[-1]) is None:
            print(f"Error: No such container: {pos[-1]}", file=sys.stderr)
            return 1
        return start(pos[-1])

    name = pos[-1] if pos else ""
    st = state(name)
    if st is None:
        print(f"Error: No such container: {name}", file=sys.stderr)
        return 1
    if cmd == "inspect":
        print(inspected(dict(opts).get("--format", "{{.State.Status}} {{.State.ExitCode}}"), name, st))
    elif cmd == "logs":
        path, pos_ = STATE / name / "log", 0
        if not path.exists():  # created, not started: nothing said yet
            return 0
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
        init = STATE / name / "init"
        opts_run = dict(tuple(o) for o in json.loads((STATE / name / "config.json").read_text())["opts"])
        if init.exists() and ("--init" in opts_run or catches(int(init.read_text()), signal.SIGTERM)):
            try:
                os.kill(int(init.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + float(dict(opts).get("--time", 10))
        while state(name)[0] == "running" and time.time() < deadline:
            time.sleep(0.2)
        if state(name)[0] == "running":  # the whole container: torchrun's workers run in sessions of their own
            for proc in descendants(pid):
                try:
                    os.kill(proc, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        print(name)
    elif cmd == "kill":  # SIGKILL to the container's processes: nothing of it runs on to save
        for proc in descendants(int((STATE / name / "pid").read_text())):
            try:
                os.kill(proc, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while state(name)[0] == "running":
            time.sleep(0.1)
        print(name)
    elif cmd == "rm":
        import shutil

        shutil.rmtree(STATE / name)
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
