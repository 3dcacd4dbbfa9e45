"""``python -m ftctl.trainer.netcheck``: a short all-reduce across every process of a run, before training.

Run it under the same torchrun line as the trainer (``ftctl doctor --network``, or the preflight step
that ``ftctl launch --preflight`` puts in the job). Every rank all-reduces a float32 buffer a few times;
rank 0 prints one line with the bus bandwidth -- nccl-tests' convention, algbw x 2(n-1)/n, so the number
is comparable across process counts and with the link's own speed -- and, on NCCL, the transport and
interface NCCL chose (read from its NCCL_DEBUG=INFO log). With ``--min-busbw-gbps`` every rank exits 3
when the bus bandwidth is below it, and the job stops before an expensive run crawls:

    netcheck: 16 processes on 2 nodes (nccl), 256 MiB all-reduce x 20 in 31.2 ms: busbw 16.1 GB/s, algbw 8.6 GB/s
    netcheck: nccl network IB, interface mlx5_0:1/IB, transports NET/IB, P2P/CUMEM

Gloo (CPU) reports its TCP interface (GLOO_SOCKET_IFNAME, else the host name's address).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time

BELOW_THRESHOLD_EXIT = 3
THRESHOLD_KEY = "preflight_min_busbw_gbps"  # the RunSpec key that sets --min-busbw-gbps


def bus_bandwidth(nbytes: int, seconds: float, world: int) -> tuple[float, float]:
    """(algbw, busbw) in GB/s of one all-reduce of ``nbytes`` taking ``seconds`` across ``world`` ranks."""
    algbw = nbytes / seconds / 1e9
    return algbw, algbw * (2 * (world - 1) / world if world > 1 else 1.0)


# NCCL_DEBUG=INFO lines, e.g. "NCCL INFO NET/Socket : Using [0]eth0:10.0.0.2<0>",
# "NCCL INFO Using network IB", "NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read"
_NET = re.compile(r"NCCL INFO Using network (\S+)")
_IFACE = re.compile(r"NCCL INFO NET/(\S+) : Using (.+)$")
_VIA = re.compile(r"NCCL INFO Channel \S+ : .* via (\S+)")


def parse_nccl_log(text: str) -> dict:
    """What NCCL chose: {network, interface, transports} from its INFO log (empty values when silent)."""
    network = interface = None
    transports: set[str] = set()
    for line in text.splitlines():
        if m := _NET.search(line):
            network = m.group(1)
        elif m := _IFACE.search(line):
            interface = f"{m.group(2).strip()} ({m.group(1)})"
        elif m := _VIA.search(line):
            via = m.group(1)
            transports.add("/".join(via.split("/")[:2]) if via.startswith(("NET", "P2P")) else via.split("/")[0])
    return {"network": network, "interface": interface, "transports": sorted(transports)}


def gloo_interface() -> str:
    name = os.environ.get("GLOO_SOCKET_IFNAME")
    if name:
        return f"{name} (GLOO_SOCKET_IFNAME)"
    host = socket.gethostname()
    try:
        return f"{socket.gethostbyname(host)} ({host})"
    except OSError:
        return host


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftctl.trainer.netcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=None, help="all-reduce size (default 256 GPU, 16 CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed all-reduces (default 20 GPU, 5 CPU)")
    parser.add_argument("--min-busbw-gbps", type=float, default=0.0, help="exit 3 below this bus bandwidth")
    parser.add_argument("--json", help="rank 0 writes the result here as JSON")
    parser.add_argument("--threshold-name", default=f"-o {THRESHOLD_KEY}", help="the floor's name in the message")
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    log_dir = None
    if cuda and "NCCL_DEBUG_FILE" not in os.environ:  # ask NCCL what it chose: its INFO log, read back below
        log_dir = tempfile.mkdtemp(prefix="ftctl-nccl-")
        os.environ.setdefault("NCCL_DEBUG", "INFO")
        os.environ.setdefault("NCCL_DEBUG_SUBSYS", "INIT,NET,GRAPH")
        os.environ["NCCL_DEBUG_FILE"] = os.path.join(log_dir, "nccl.%h.%p.log")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    nodes = max(world // max(local_world, 1), 1)
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    size_mb = args.size_mb or (256 if cuda else 16)
    iters = args.iters or (20 if cuda else 5)
    buf = torch.ones(int(size_mb * 2**20) // 4, dtype=torch.float32, device=device)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(2):  # warm-up: connections, NCCL channels
        dist.all_reduce(buf)
    sync()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(buf)
    sync()
    elapsed = torch.tensor([(time.perf_counter() - start) / iters], dtype=torch.float64, device=device)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank's time: every rank decides alike
    seconds = float(elapsed.item())
    algbw, busbw = bus_bandwidth(buf.numel() * 4, seconds, world)
    result = {
        "backend": backend,
        "processes": world,
        "nodes": nodes,
        "size_mib": size_mb,
        "iters": iters,
        "time_ms": round(seconds * 1e3, 3),
        "algbw_gbps": round(algbw, 3),
        "busbw_gbps": round(busbw, 3),
        "min_busbw_gbps": args.min_busbw_gbps,
    }
    dist.barrier()
    if cuda:
        files = glob.glob(os.path.join(log_dir, "nccl.*")) if log_dir else []
        result.update(parse_nccl_log("".join(open(p, errors="replace").read() for p in files)))
    else:
        result.update({"network": "gloo/tcp", "interface": gloo_interface(), "transports": ["tcp"]})
    ok = busbw >= args.min_busbw_gbps
    if rank == 0:
        print(
            f"netcheck: {world} processes on {nodes} node(s) ({backend}), {size_mb:g} MiB all-reduce x {iters} "
            f"in {seconds * 1e3:.1f} ms: busbw {busbw:.2f} GB/s, algbw {algbw:.2f} GB/s",
            flush=True,
        )
        print(
            f"netcheck: {backend} network {result['network']}, interface {result['interface']}, "
            f"transports {', '.join(result['transports']) or 'unknown'}",
            flush=True,
        )
        if not ok:
            print(
                f"netcheck: FAILED: bus bandwidth {busbw:.2f} GB/s is below {args.min_busbw_gbps:g} GB/s "
                f"({args.threshold_name}). Check the interface above (NCCL_SOCKET_IFNAME, -o socket_ifname=...), "
                f"InfiniBand/EFA drivers, or lower {args.threshold_name}.",
                file=sys.stderr,
                flush=True,
            )
        if args.json:
            with open(args.json, "w") as f:
                json.dump({**result, "ok": ok}, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    if log_dir:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0 if ok else BELOW_THRESHOLD_EXIT


if __name__ == "__main__":
    sys.exit(main())
