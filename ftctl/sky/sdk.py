"""The SkyPilot operations ftctl uses, in the environment where SkyPilot is installed.

Every function here imports ``sky`` and takes and returns plain JSON-able data, so it runs either in
this process (the launcher environment, ``.venv-sky``, where ``sky`` imports) or in a child process
started by :mod:`ftctl.sky.bridge` from the trainer environment, where SkyPilot cannot be installed
(its click pin conflicts with transformers):

    python -m ftctl.sky.sdk OP RESULT_FILE   < JSON keyword arguments
        writes {"result": ...} or {"error": "..."} to RESULT_FILE; SkyPilot's own progress output and
        the logs of ``logs`` go to this process's stdout/stderr, which the parent shares.

Nothing outside this module imports ``sky``. States are returned in SkyPilot's words; the backend maps
them onto ftctl's (ftctl/sky/backend.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _sky():
    os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
    try:
        import sky
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "sky":
            raise
        raise ModuleNotFoundError(not_installed(sys.executable, os.environ.get("FTCTL_SKY_PYTHON"))) from None
    return sky


def not_installed(python: str, chosen: str | None) -> str:
    """What to do where ``python``, the one ftctl runs SkyPilot with (``chosen``: $FTCTL_SKY_PYTHON), lacks it."""
    install = f"install it there ({python} -m pip install 'ftctl[sky]')"
    if chosen:
        return (
            f"FTCTL_SKY_PYTHON={chosen} has no SkyPilot (no module named 'sky'): {install}, point FTCTL_SKY_PYTHON "
            "at the python of a venv with ftctl[sky], or unset it to use .venv-sky (scripts/setup.sh makes it)."
        )
    return (
        f"{python}, the python ftctl runs SkyPilot with, has no SkyPilot (no module named 'sky'): {install}, or set "
        "FTCTL_SKY_PYTHON to the python of a venv with ftctl[sky]."
    )


def sky_cli() -> str:
    """How to call SkyPilot's own command line: ``sky`` where the one on PATH is this environment's, else its path
    (SkyPilot in a venv of its own, .venv-sky, is not on PATH)."""
    here = os.path.join(os.path.dirname(sys.executable), "sky")
    on_path = shutil.which("sky")
    if on_path and (not os.path.exists(here) or os.path.realpath(on_path) == os.path.realpath(here)):
        return "sky"
    return shlex.quote(here) if os.path.exists(here) else "sky"


# ------------------------------------------------------------------------------------------ checks
SERVER_STARTS = "ftctl: starting SkyPilot's API server (about 30 s, once) ..."
# the operations that send SkyPilot's API server a request: where none answers on this machine, SkyPilot's SDK
# starts one first (~32 s), saying so only in output that ftctl keeps back from its quick questions
SERVER_OPS = frozenset({"launch", "statuses", "logs", "log_tail", "cancel", "down"})
SAY_FD = "FTCTL_SKY_SAY_FD"  # the parent's stderr, where the bridge keeps this process's output back (bridge.call)


def server_starts() -> bool:
    """Whether SkyPilot's next request starts a local API server, as its SDK decides it
    (server_common.check_server_healthy_or_start_fn): the endpoint is this machine's, none answers there, and
    starting one here is not disabled (SKYPILOT_DISABLE_LOCAL_API_SERVER: SkyPilot says that itself)."""
    _sky()
    from sky.server import common as server_common

    dial = getattr(server_common, "get_local_server_dial_url", None)  # its endpoint: env and config honoured
    endpoint = dial("127.0.0.1") if dial else server_common.get_server_url()
    if not server_common.is_api_server_local(endpoint):
        return False  # a remote server that does not answer is SkyPilot's error, nothing is started
    enabled = getattr(server_common, "check_local_api_server_enabled_or_raise", None)
    try:
        enabled and enabled()
    except RuntimeError:
        return False
    # one /api/health request, which SkyPilot's own check then reuses (cached 5 s)
    return server_common.get_api_server_status(endpoint).status == server_common.ApiServerStatus.UNHEALTHY


def say(line: str) -> None:
    """A line for the user's terminal: the parent's stderr where the bridge passed it (SAY_FD), else this one's."""
    fd = os.environ.get(SAY_FD)
    if fd:
        os.write(int(fd), (line + "\n").encode())
    else:
        print(line, file=sys.stderr, flush=True)


def run(op: str, kwargs: dict):
    """``OPS[op](**kwargs)``, after one line where SkyPilot will start its API server for it."""
    try:
        starts = op in SERVER_OPS and server_starts()
    except Exception:  # noqa: BLE001 — the line is advisory: a SkyPilot that asks otherwise (or a stand-in) gets none
        starts = False
    if starts:
        say(SERVER_STARTS)
    return OPS[op](**kwargs)


def available() -> dict:
    """{"ok": bool, "why": str}: an API server answers and has a cloud or infra enabled."""
    _sky()
    from sky.server import common as server_common

    url = server_common.get_server_url()
    info = server_common.get_api_server_status(url)
    if str(getattr(info.status, "value", info.status)).lower() != "healthy":
        return {"ok": False, "why": f"no SkyPilot API server answers at {url} (start one: {sky_cli()} api start)"}
    sky = _sky()
    clouds = [str(c) for c in sky.get(sky.enabled_clouds())]
    if not clouds:
        return {"ok": False, "why": f"SkyPilot has no cloud or infra enabled (run: {sky_cli()} check)"}
    return {"ok": True, "why": f"SkyPilot has {', '.join(clouds)} enabled"}


# ------------------------------------------------------------------------------------------ launch
def launch(
    task_yaml: str,
    workdir: str | None,
    cluster: str,
    managed: bool,
    down: bool,
    idle_minutes: int | None,
    secrets: list[str],
    named: bool = False,
) -> dict:
    """Launch the task: a managed job (``managed``) named ``cluster``, else ``sky.launch`` on the cluster ``cluster``
    with an idle autostop (or ``down``). An up cluster is reused by sky.launch too, never sky.exec: that runs no setup
    (what this run needs beyond an earlier run's, wandb or gcsfs, was missing, and its -o setup lines were dropped),
    syncs no file_mounts and sets no autodown. A cluster there already is checked first: where its disk is smaller
    than the task's, or it lacks a tier the task names, or other GPUs, nodes, infra or image than the task asks for,
    or its nodes have less RAM than the task's memory:, nothing is launched ({"misfit": misfit's, {"short_disk":
    short_disk's, {"tiers_missing": tiers_missing's} or {"short_ram": short_ram's}, with its "cluster_hash" and
    "sky"}); a cluster the
    user ``named`` (--cluster) where jobs wait or run: one line says this one queues behind them (queued_behind; its
    sky.queue asks the cluster's head, 8 s on the loaded test infra, so not for a run's own cluster, where a job
    still running is this run's, which launch refused before)."""
    sky = _sky()
    import yaml

    with open(task_yaml) as fh:
        config = yaml.safe_load(fh)
    # secrets travel by name (the YAML declares --secret's); their values are taken from this environment here,
    # into SkyPilot's secrets (never the YAML). One not set here is left out, not sent empty.
    values = [(name, os.environ[name]) for name in secrets if name in os.environ]
    missing = sorted(set(secrets) - {name for name, _ in values})
    if missing:
        print(f"ftctl: not set here, so not passed to the job: {', '.join(missing)}", file=sys.stderr)
    config["secrets"] = {k: v for k, v in (config.get("secrets") or {}).items() if k not in missing}
    if not config["secrets"]:
        del config["secrets"]
    task = sky.Task.from_yaml_config(config, secrets_overrides=values or None)
    if workdir:
        task.workdir = workdir
        task.expand_and_validate_workdir()
    if managed:
        job_ids, _ = sky.stream_and_get(sky.jobs.launch(task, name=cluster))
        return {"job_id": int(job_ids[0]), "cluster": None, "managed": True}
    found = sky.get(sky.status([cluster]))
    if found and (other := misfit(found[0], task)):
        return {"misfit": {**other, "cluster_hash": _get(found[0], "cluster_hash"), "sky": sky_cli()}}
    if found and (short := short_disk(found[0], task)):
        return {"short_disk": {**short, "cluster_hash": _get(found[0], "cluster_hash"), "sky": sky_cli()}}
    if found and (tiers := tiers_missing(found[0], task)):
        return {"tiers_missing": {"tiers": tiers, "cluster_hash": _get(found[0], "cluster_hash"), "sky": sky_cli()}}
    if found and (ram := short_ram(found[0], task)):
        return {"short_ram": {**ram, "cluster_hash": _get(found[0], "cluster_hash"), "sky": sky_cli()}}
    if named and found and (line := queued_behind(sky, cluster, found[0])):
        say(line)
    job_id, _ = sky.stream_and_get(
        sky.launch(task, cluster_name=cluster, idle_minutes_to_autostop=idle_minutes, down=down)
    )
    records = sky.get(sky.status([cluster]))
    made = _get(records[0], "cluster_hash") if records else None
    return {"job_id": int(job_id), "cluster": cluster, "managed": False, "cluster_hash": made}


# The clouds where a cluster's disk_size is the disk its nodes were made with: a VM's disk (the clouds whose cluster
# template, sky/templates/CLOUD-ray.yml.j2, writes it), and on Kubernetes and SSH node pools (SkyPilot's Kubernetes)
# its pods' ephemeral-storage request (their limit too, with set_pod_resource_limits), made only where a disk_size was
# given. SkyPilot 0.14 makes no disk of that size on Slurm (its provisioner never reads disk_size: a node has the
# filesystems it has) nor on the clouds whose template lacks it (lambda, fluidstack, hyperbolic, ibm, mithril,
# shadeform, vsphere: an instance type's own disk). tests/test_sky_cluster236.py checks it against the installed one.
DISK_SIZE_CLOUDS = frozenset(
    {"aws", "azure", "cudo", "do", "gcp", "nebius", "oci", "paperspace", "primeintellect", "runpod", "scp", "seeweb"}
    | {"vast", "verda", "yotta", "kubernetes", "ssh"}
)
POD_CLOUDS = frozenset({"kubernetes", "ssh"})  # disk_size: a pod's ephemeral-storage request


def short_disk(record, task) -> dict | None:
    """{"cluster_gib", "task_gib", "pods"} where the cluster of ``record`` (a sky.status record) was made with less
    disk than ``task`` asks for; None where it has enough, or disk_size made no disk there (DISK_SIZE_CLOUDS). An up
    cluster is reused, and a stopped one started again, with the disk it was made with (sky.launch provisions
    ``handle.launched_resources``), and SkyPilot's fit check (Resources.less_demanding_than) leaves disk_size out: a
    bigger run was taken, and a checkpoint's save filled the disk hours in. A pod made without a disk_size has no
    request (it takes the node's disk as it comes): nothing to compare."""
    launched = getattr(_get(record, "handle"), "launched_resources", None)
    cloud = getattr(launched, "cloud", None)
    if cloud is None or cloud.canonical_name() not in DISK_SIZE_CLOUDS:
        return None
    pods = cloud.canonical_name() in POD_CLOUDS
    asked = [r.disk_size for r in task.resources if r.disk_size_specified]
    if not asked or (pods and not launched.disk_size_specified) or launched.disk_size >= min(asked):
        return None
    return {"cluster_gib": int(launched.disk_size), "task_gib": int(min(asked)), "pods": pods}


def short_ram(record, task) -> dict | None:
    """{"cluster_gib", "task_gib", "instance"} where the nodes of the cluster of ``record`` (a sky.status record) have
    less RAM than ``task`` asks for (``memory:``: an offload plan's host RAM, a CPU plan's processes'); None where
    they have enough, the task asks none, or the nodes' RAM cannot be told. An up cluster is reused, and a stopped
    one started again, with the instances it was made with, and SkyPilot's fit check (Resources.less_demanding_than)
    leaves memory out: it would take a ZeRO-Offload run sent with --cluster onto a cluster a lora made, where the
    kernel's OOM killer ends it as its optimizer states move to host RAM. The nodes' RAM is the launched instance type's, as
    its cloud tells it (a VM's from the catalog, a Kubernetes pod's or a Slurm allocation's from the type's name)."""
    launched = getattr(_get(record, "handle"), "launched_resources", None)
    if launched is None:  # its nodes' RAM cannot be told
        return None
    asked = [gib for res in task.resources if (gib := _memory_gib(res.memory)) is not None]
    if not asked:
        return None
    have = node_ram_gib(launched)
    if have is None or have >= min(asked):
        return None
    return {"cluster_gib": have, "task_gib": min(asked), "instance": launched.instance_type}


def node_ram_gib(launched) -> float | None:
    """The RAM (GiB) of a node of the launched resources ``launched``: its instance type's, as its cloud tells it,
    else an exact ``memory:`` it was launched with; None where neither tells it (a request "N+" says only at least; a
    Slurm instance type of 0GB was sent with no --mem, and its jobs get the partition's default or the whole node)."""
    cloud, instance = getattr(launched, "cloud", None), getattr(launched, "instance_type", None)
    if cloud is not None and instance:
        try:
            _, memory = cloud.get_vcpus_mem_from_instance_type(instance)
        except Exception:  # noqa: BLE001 - a catalog that cannot be read now: not told, nothing refused
            memory = None
        if memory:  # 0: a Slurm allocation made without --mem (the cluster does not track memory): not told
            return float(memory)
    said = _memory_gib(getattr(launched, "memory", None))
    return said if said and not str(launched.memory).endswith("+") else None


def _memory_gib(memory) -> float | None:
    """A ``memory:`` value's GiB: '172+' and '172' -> 172.0; None for none (or one that is no number of GiB)."""
    if memory is None:
        return None
    try:
        return float(str(memory).strip().rstrip("+"))
    except ValueError:
        return None


def misfit(record, task) -> dict | None:
    """{"cluster": what the cluster of ``record`` (a sky.status record) was launched with, "task": what ``task`` asks
    for}, each as ``shape`` words, where SkyPilot's fit check refuses the task there (check_resources_fit_cluster: the
    task's nodes at most the cluster's, and one of its resources Resources.less_demanding_than the cluster's): another
    --gpus, more --nodes, another --infra or --container on a relaunch onto the run's own cluster, up or stopped after
    its idle autostop. SkyPilot says it as "Requested resources do not match the existing cluster ... To fix: specify
    a new cluster name, or down the existing cluster first: sky down NAME", naming none of ftctl's options (explore63
    finding 1). The tiers are left out here: tiers_missing says them, with the -o that runs on the cluster as it is.
    None where it fits, or the record holds no launched resources."""
    handle = _get(record, "handle")
    launched = getattr(handle, "launched_resources", None)
    nodes = getattr(handle, "launched_nodes", None)
    if launched is None or not nodes:
        return None
    for res in task.resources:
        plain = res.copy(disk_tier=None, network_tier=None)
        if task.num_nodes <= nodes and plain.less_demanding_than(launched, requested_num_nodes=task.num_nodes):
            return None
    cluster, asked = shape(nodes, [launched]), shape(task.num_nodes, list(task.resources))
    if cluster == asked:  # what shape leaves out (an instance type, spot, local disk): in SkyPilot's words as well
        cluster += f" (SkyPilot: {launched})"
        asked += f" (SkyPilot: {' or '.join(dict.fromkeys(str(res) for res in task.resources))})"
    return {"cluster": cluster, "task": asked}


def shape(nodes: int, resources: list) -> str:
    """'2 nodes of H100:8 on gcp/us-central1/us-central1-a, image docker:REF': the node count, the GPUs (one type or
    another's of several resources), the infra (cloud/region/zone, as far as named: SkyPilot gives every cluster it
    launches a zone, and --infra may name one) and the image where named."""
    gpus = []
    for res in resources:
        for name, count in (res.accelerators or {}).items():
            said = f"{name}:{int(count) if float(count).is_integer() else count}"
            gpus += [said] if said not in gpus else []
    words = f"{nodes} node{'s' if nodes != 1 else ''} of {' or '.join(gpus) if gpus else 'CPUs only'}"
    first = resources[0]
    if first.cloud is not None:
        words += " on " + "/".join([str(first.cloud).lower(), *filter(None, [first.region, first.zone])])
    images = sorted({str(v) for v in (first.image_id or {}).values()})
    return words + (f", image {', '.join(images)}" if images else "")


def tiers_missing(record, task) -> dict[str, str]:
    """{field: tier} of the task's disk_tier and network_tier that the cluster of ``record`` (a sky.status record) was
    launched without, or with a lower network tier: SkyPilot's fit check (Resources.less_demanding_than) refuses the
    task there, "Requested resources do not match the existing cluster", in words that name none of ftctl's options.
    A disk_tier of best fits any tier the cluster has."""
    launched = getattr(_get(record, "handle"), "launched_resources", None)
    if launched is None:
        return {}
    out = {}
    for res in task.resources:
        if res.disk_tier is not None and launched.disk_tier is None:
            out["disk_tier"] = res.disk_tier.value
        if res.network_tier is not None and (
            launched.network_tier is None or not res.network_tier <= launched.network_tier
        ):
            out["network_tier"] = res.network_tier.value
    return out


def queued_behind(sky, cluster: str, record) -> str | None:
    """'ftctl: cluster C has job 3 (RUNNING) ...: this job queues behind it ...' where the up cluster of ``record``
    (sky.status's) has jobs that did not end, anybody's (sky.queue); None otherwise, or where its queue cannot be
    read now (the line is advisory: sky.launch goes on either way)."""
    ahead = unfinished(sky, cluster, record)
    if not ahead:
        return None
    return (
        f"ftctl: cluster {cluster} has {listed(ahead)} in its queue: this job queues behind "
        f"{'it' if len(ahead) == 1 else 'them'} until the GPUs it asks for are free (`{sky_cli()} queue {cluster}` "
        "lists them; another --cluster runs it apart)"
    )


def unfinished(sky, cluster: str, record) -> list[tuple[int, str]]:
    """[(job id, SkyPilot's word)] of the jobs of anybody's that did not end on the up cluster of ``record``
    (sky.status's), by sky.queue (it asks the cluster's head); [] where it is not up, or its queue cannot be read."""
    if str(getattr(_get(record, "status"), "value", _get(record, "status"))) != "UP":
        return []
    try:
        jobs = sky.get(sky.queue(cluster, skip_finished=True, all_users=True))
    except Exception:  # noqa: BLE001 - what asks goes on: SkyPilot says what is wrong with the cluster, if anything
        return []
    return sorted(
        (int(_get(j, "job_id")), _get(j, "status").value) for j in jobs if not _get(j, "status").is_terminal()
    )


def listed(jobs: list[tuple[int, str]]) -> str:
    return ", ".join(f"job {job_id} ({word})" for job_id, word in jobs)


# ------------------------------------------------------------------------------------------ watch
def _later_cluster(records: list, cluster: str, cluster_hash: str | None) -> str | None:
    """Why the job's cluster is gone where a cluster of its name is up (or being made) that is not the one the job ran
    on (``cluster_hash``, recorded at launch): torn down and launched anew since, its job ids counted from 1 again, so
    the job's id now names another job. None where it is the job's own cluster, or no such cluster is up (``records``:
    sky.status of ``cluster``)."""
    now = _get(records[0], "cluster_hash") if records else None
    if cluster_hash and now and now != cluster_hash:
        return (
            f"cluster {cluster} was torn down after this job ran; the cluster of that name now is a later launch "
            "(its job ids counted anew: this id names another job there)"
        )
    return None


TAILED = ("RUNNING", "FAILED")  # the words (FAILED_SETUP ...) whose log `ftctl status` reads: its step, its error


def statuses(jobs: list[dict], tails: bool = False) -> list[dict]:
    """For each of ``jobs`` ({"cluster", "job_id", "managed", "cluster_hash"}): {"status": SkyPilot's word or "GONE",
    "detail": str} (a managed job's "recoveries" too), in as few requests as SkyPilot allows: one jobs.queue_v2 for
    every managed job, one sky.status and one sky.job_status per cluster (each request took 0.2-6 s on the test infra,
    a python importing SkyPilot 2-4 s: `ftctl jobs` asked each job in a python of its own). A cluster whose jobs
    cannot be asked gets {"error": why} for each of them. ``tails``: a job that runs or failed gets its "tail" too (as
    log_tail's text) from this same python, which `ftctl status` asked in one of its own (2-8 s more a poll, loaded)."""
    out = _statuses(_sky(), jobs)
    for job, answer in zip(jobs, out) if tails else ():
        if str(answer.get("status", "")).startswith(TAILED):
            try:  # its cluster is the job's own: statuses said GONE otherwise
                answer["tail"] = _tail_text(_sky(), job["cluster"], int(job["job_id"]), bool(job["managed"]))
            except Exception:  # noqa: BLE001 - no tail: the backend asks log_tail, which says why
                pass
    return out


def _statuses(sky, jobs: list[dict]) -> list[dict]:
    out: list[dict] = [{} for _ in jobs]
    managed = [i for i, job in enumerate(jobs) if job["managed"]]
    if managed:
        answers = _managed_statuses(sky, [int(jobs[i]["job_id"]) for i in managed])
        for i in managed:
            out[i] = answers[int(jobs[i]["job_id"])]
    on = {}  # cluster -> the indices of its jobs
    for i, job in enumerate(jobs):
        if not job["managed"]:
            on.setdefault(job["cluster"], []).append(i)
    for cluster, indices in on.items():
        try:
            records = sky.get(sky.status([cluster]))  # the API server's own table: 0.2 s
            answers = _cluster_statuses(sky, cluster, records, [jobs[i] for i in indices])
        except Exception as e:  # noqa: BLE001 - this cluster's jobs only
            answers = [{"error": _message(e)}] * len(indices)
        for i, answer in zip(indices, answers):
            out[i] = answer
    return out


def _managed_statuses(sky, job_ids: list[int]) -> dict[int, dict]:
    # failure_reason is not among the queue's default fields (sky.jobs.constants.DEFAULT_MANAGED_JOB_FIELDS)
    fields = ["job_id", "status", "recovery_count", "failure_reason"]
    try:
        asked = sky.jobs.queue_v2(refresh=False, skip_finished=False, all_users=True, job_ids=job_ids, fields=fields)
        records = sky.get(asked)[0]
    except sky.exceptions.ClusterNotUpError:  # refresh=True would start it (a VM of its own, on a cloud)
        stopped = {
            "status": "GONE",
            "detail": "SkyPilot's jobs controller is stopped (it stops once no managed job runs): `sky jobs queue "
            "--refresh` starts it and lists how each job ended",
        }
        return dict.fromkeys(job_ids, stopped)
    found = {}
    for r in records:
        st = _get(r, "status")
        found[int(_get(r, "job_id"))] = {
            "status": str(getattr(st, "value", st)),
            "detail": str(_get(r, "failure_reason") or ""),
            "recoveries": _get(r, "recovery_count"),
        }
    gone = {i: {"status": "GONE", "detail": f"no managed job {i} in `sky jobs queue`"} for i in job_ids}
    return {i: found.get(i, gone[i]) for i in job_ids}


def _cluster_statuses(sky, cluster: str, records: list, jobs: list[dict]) -> list[dict]:
    """The answers for ``jobs`` of ``cluster`` (``records``: its sky.status records), one sky.job_status request."""
    if not records:
        return [{"status": "GONE", "detail": f"cluster {cluster} is gone (torn down)"} for _ in jobs]
    later = [_later_cluster(records, cluster, job.get("cluster_hash")) for job in jobs]
    asked = sorted({int(job["job_id"]) for job, why in zip(jobs, later) if not why})
    word = str(getattr(records[0]["status"], "value", records[0]["status"]))
    statuses = {}
    if asked:
        try:
            statuses = sky.get(sky.job_status(cluster, asked))
        except sky.exceptions.ClusterNotUpError:  # stopped (autostopped once idle), or INIT while a launch updates it
            how = f"`sky start {cluster}` reads its jobs" if word == "STOPPED" else "its jobs are read once it is up"
            return [{"status": "GONE", "detail": why or f"cluster {cluster} is {word.lower()}: {how}"} for why in later]
    answers = []
    for job, why in zip(jobs, later):
        st = None if why else statuses.get(int(job["job_id"]), statuses.get(str(job["job_id"])))
        if why:
            answers.append({"status": "GONE", "detail": why})
        elif st is None:
            answers.append({"status": "GONE", "detail": f"cluster {cluster} has no job {job['job_id']}"})
        else:
            answers.append({"status": str(getattr(st, "value", st)), "detail": ""})
    return answers


def _get(record, key):
    return record.get(key) if isinstance(record, dict) else getattr(record, key, None)


def logs(
    cluster: str | None,
    job_id: int,
    managed: bool,
    follow: bool,
    cluster_hash: str | None = None,
    tail: int | None = None,
) -> dict:
    """Print the job's log (its last ``tail`` lines where given, SkyPilot reading them back from the log's end)."""
    sky = _sky()
    if managed:
        rc = sky.jobs.tail_logs(job_id=job_id, follow=follow, tail=tail, output_stream=sys.stdout)
    else:
        if later := _later_cluster(sky.get(sky.status([cluster])), cluster, cluster_hash):
            raise RuntimeError(f"{later}; its log went with it")
        rc = sky.tail_logs(cluster, job_id=job_id, follow=follow, tail=tail or 0, output_stream=sys.stdout)
    sys.stdout.flush()
    return {"rc": rc}


TAIL_LINES = 200
PREFIX = re.compile(r"^(\x1b\[[0-9;]*m)*\([^()]*\)(\x1b\[[0-9;]*m)* ?")  # SkyPilot's "(head, rank=0, pid=N) "


def log_tail(cluster: str | None, job_id: int, managed: bool, cluster_hash: str | None = None) -> dict:
    """{"text": the job's last TAIL_LINES log lines} as the node wrote them: SkyPilot's "(setup pid=N) " / "(head,
    rank=0, pid=N) " before each and its colours left out, so a trainer's or setup's ``error:`` line starts its line."""
    sky = _sky()
    if not managed and _later_cluster(sky.get(sky.status([cluster])), cluster, cluster_hash):
        return {"text": ""}
    return {"text": _tail_text(sky, cluster, job_id, managed)}


def _tail_text(sky, cluster: str | None, job_id: int, managed: bool) -> str:
    import io

    out = io.StringIO()
    if managed:
        sky.jobs.tail_logs(job_id=job_id, follow=False, tail=TAIL_LINES, output_stream=out)
    else:
        sky.tail_logs(cluster, job_id=job_id, follow=False, tail=TAIL_LINES, output_stream=out)
    return "\n".join(_ANSI.sub("", PREFIX.sub("", line)) for line in out.getvalue().splitlines())


def cancel(cluster: str | None, job_id: int, managed: bool, cluster_hash: str | None = None) -> dict:
    sky = _sky()
    if managed:
        sky.get(sky.jobs.cancel(job_ids=[job_id]))
    else:
        if later := _later_cluster(sky.get(sky.status([cluster])), cluster, cluster_hash):
            raise RuntimeError(f"{later}; nothing was cancelled")
        sky.get(sky.cancel(cluster, job_ids=[job_id]))
    return {}


def down(cluster: str) -> dict:
    """Tear ``cluster`` down, where it has no job that did not end: {"gone": bool}; else {"busy": [(job id, SkyPilot's
    word)], "listed": their words, "sky": sky_cli(), "cluster_hash": the cluster's (which cluster of the name the ids
    are of)}, nothing torn down. SkyPilot's down kills a running job unsaved, and its `sky down` asks first; `ftctl
    down` of a training job's cluster tore it down at once, losing what was trained since the last checkpoint, where
    `ftctl cancel` saves one first (explore63 finding 5). The jobs are anybody's (sky.queue of all users)."""
    sky = _sky()
    records = sky.get(sky.status([cluster]))
    if not records:
        return {"gone": True}
    if busy := unfinished(sky, cluster, records[0]):
        made = _get(records[0], "cluster_hash")
        return {"busy": busy, "listed": listed(busy), "sky": sky_cli(), "cluster_hash": made}
    sky.stream_and_get(sky.down(cluster))
    return {"gone": False}


# ------------------------------------------------------------------------------------------ cost
def optimize(resources: dict, num_nodes: int) -> dict:
    """The cheapest cloud/region/instance for ``resources`` (a task YAML's resources section), from
    SkyPilot's optimizer and catalog, in this process (no API server): hourly price per node, the instance's RAM.
    Where no instance with the rest of the request has the ``memory:`` asked for: {"no_vm": SkyPilot's words,
    "without_memory": the cheapest instance of the rest}."""
    sky = _sky()
    try:
        return _cheapest(sky, resources, num_nodes)
    except sky.exceptions.NoCloudAccessError:  # no cloud enabled here: a price is unknown, not an error
        # SkyPilot's "Run: sky check" names a sky that is not on PATH where SkyPilot has a venv of its own
        return {"unavailable": f"no cloud is enabled in SkyPilot here (run: {sky_cli()} check)"}
    except sky.exceptions.ResourcesUnavailableError as e:
        if "memory" not in resources:
            raise
        rest = {k: v for k, v in resources.items() if k != "memory"}
        try:
            without = _cheapest(sky, rest, num_nodes)
        except sky.exceptions.ResourcesUnavailableError:  # nor without it: the GPUs themselves, in SkyPilot's words
            raise e from None
        return {"no_vm": _message(e), "without_memory": without}


def _cheapest(sky, resources: dict, num_nodes: int) -> dict:
    from sky import optimizer

    with sky.Dag() as dag:
        task = sky.Task(name="ftctl-plan", run="true", num_nodes=num_nodes)
        task.set_resources(sky.Resources.from_yaml_config(resources))
    options = list(task.resources)
    dag = optimizer.Optimizer.optimize(dag, quiet=True)
    out = _priced(dag.tasks[0].best_resources)
    if len(options) > 1:  # -o also_gpus, -o on_demand_fallback: what each costs where the cheapest is not to be had
        out["options"] = []
        for option in options:
            with sky.Dag() as one:
                sky.Task(name="ftctl-plan", run="true", num_nodes=num_nodes).set_resources(option)
            try:
                out["options"].append(_priced(optimizer.Optimizer.optimize(one, quiet=True).tasks[0].best_resources))
            except sky.exceptions.ResourcesUnavailableError:  # none of it in the enabled clouds' catalogs
                continue
        out["options"].sort(key=lambda o: o["hourly_per_node"])
    return out


def _priced(best) -> dict:
    _, memory = best.cloud.get_vcpus_mem_from_instance_type(best.instance_type)
    return {
        "cloud": str(best.cloud),
        "region": best.region,
        "zone": best.zone,
        "instance_type": best.instance_type,
        "spot": bool(best.use_spot),
        "hourly_per_node": float(best.get_cost(3600)),
        "accelerators": best.accelerators,
        "memory_gib": memory,
    }


OPS = {"available": available, "launch": launch, "statuses": statuses, "logs": logs}
OPS.update(cancel=cancel)
OPS.update(log_tail=log_tail)
OPS.update(down=down, optimize=optimize)


def _message(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    # SkyPilot's messages are written for people; keep them whole, minus rich/ANSI markup
    return _ANSI.sub("", text)


def main(argv: list[str]) -> int:
    op, result_file = argv
    kwargs = json.loads(sys.stdin.read() or "{}")
    try:
        out = {"result": run(op, kwargs)}
        rc = 0
    except KeyboardInterrupt:
        out, rc = {"error": "interrupted"}, 130
    except Exception as e:  # noqa: BLE001 — every failure goes back to the parent as one message
        if os.environ.get("FTCTL_DEBUG"):
            import traceback

            traceback.print_exc()
        out, rc = {"error": _message(e), "kind": type(e).__name__}, 1
    with open(result_file, "w") as fh:
        json.dump(out, fh)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
