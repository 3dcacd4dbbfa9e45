"""A run across an ftctl upgrade (explore62, helper 296: /work/notes/explore62-upgrade.md): a Slurm requeue, a SkyPilot
recovery or a relaunch runs the ftctl installed now on a run directory an older one wrote.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# cache_key of argv[1]'s rows and argv[2]'s tokenizer, then ftctl's tokenizing code on disk replaced (an upgrade, as
# pip install -U writes it, while this process still runs the code it imported), then cache_key again
_KEYS = r"""
import sys
from pathlib import Path
from ftctl.trainer import data
print(data.cache_key(sys.argv[1], sys.argv[2], 64))
if len(sys.argv) > 3:
    masks = Path(data.__file__).with_name("masks.py")
    masks.write_text(masks.read_text() + "\n# the next version\n")
    print(data.cache_key(sys.argv[1], sys.argv[2], 64))
"""


def test_the_cache_key_names_the_code_that_runs_not_the_files_upgraded_since(tmp_path, tiny_model_dir, tiny_data):
    """An ftctl upgraded in place while a trainer loads its model (a shared venv, a Slurm job starting): the rows its
    old code tokenizes were kept under the key of the new code's files, and the next start, of the new code, read
    them as its own. Replayed on CPU with cdf42c6's trainer, its four tokenizing files swapped for HEAD's while it
    loaded: its entry took HEAD's name (1fb98c00...), which HEAD's resume then reads. The key is of the code as
    imported; a process of the new code still has another."""
    install = tmp_path / "site"
    shutil.copytree(REPO / "ftctl", install / "ftctl", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(install), "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}

    def keys(*more):
        args = [sys.executable, "-c", _KEYS, str(tiny_data), str(tiny_model_dir), *more]
        proc = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    running, upgraded_under_it = keys("upgrade")
    assert running == upgraded_under_it  # the old code's rows: its own key, whatever the files say now
    (after,) = keys()  # the next start, of the new code
    assert after != running


def _rows(list_type, ids_type, labels):
    import datasets
    import pyarrow as pa

    ids = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    column = {"input_ids": ids, "labels": labels}
    return datasets.Dataset(
        pa.table({name: pa.array(values, type=list_type(ids_type)) for name, values in column.items()})
    )


def test_the_rows_digest_is_of_the_tokens_not_the_type_they_are_kept_in():
    """A checkpoint records its rows' digest (data.rows_digest), and a resume whose rows' digest differs says its data
    was edited since. The digest hashed the arrow buffers as they were: the same tokens kept as int64 or in a
    large_list (another ftctl's cache) read as other rows, so a resume after an upgrade said the data had changed.
    The int32 list columns ftctl keeps now digest as before: the checkpoints saved so far still match."""
    import hashlib

    import pyarrow as pa
    import pyarrow.compute as pc

    from ftctl.trainer.data import rows_digest

    labels = [[-100, 6, 7], [-100, 9], [-100, -100, 12, 13]]
    now = _rows(pa.list_, pa.int32(), labels)
    digest = hashlib.blake2b(digest_size=16)  # HEAD's recorded digest, of the int32 buffers
    for name in ("input_ids", "labels"):
        column = now.data.table.column(name).combine_chunks()
        digest.update(pc.list_value_length(column).to_numpy(zero_copy_only=False).tobytes())
        digest.update(pc.list_flatten(column).to_numpy(zero_copy_only=False).tobytes())
    assert rows_digest(now) == digest.hexdigest()
    for kept in (_rows(pa.list_, pa.int64(), labels), _rows(pa.large_list, pa.int32(), labels)):
        assert rows_digest(kept) == rows_digest(now)
    edited = [[-100, 6, 7], [-100, 9], [-100, -100, -100, 13]]
    assert rows_digest(_rows(pa.list_, pa.int32(), edited)) != rows_digest(now)


# a trainer of the ftctl in argv[1] (PYTHONPATH's first) whose install is upgraded once it has started: a module it
# imports later (diverged, which setup imports) then imports what only the next version's spec.py has
_UPGRADED_UNDER_IT = r"""
import json, sys, time
started = time.time()
from pathlib import Path
from tests.trainer_fixtures import make_run
from ftctl.errors import FtctlError
from ftctl.trainer import run
spec, plan = make_run(sys.argv[2], sys.argv[3], sys.argv[4], "lora", max_steps=1)
assert "ftctl.trainer.diverged" not in sys.modules
while time.time() < started + 2.5:  # newer than this process by more than /proc's whole seconds can tell
    time.sleep(0.1)
diverged = Path(sys.argv[1], "ftctl", "trainer", "diverged.py")
diverged.write_text(diverged.read_text() + "\nfrom ftctl.spec import IN_THE_NEXT_VERSION  # noqa\n")
try:
    run.train(spec, plan, echo=lambda *_: None)
except FtctlError as e:
    print(json.dumps({"said": str(e)}))
except ImportError as e:
    print(json.dumps({"raised": repr(e)}))
print(json.dumps({"status": Path(sys.argv[4], ".ftctl", "status").read_text().strip()}))
"""


def test_a_trainer_whose_ftctl_is_upgraded_as_it_starts_says_so(tmp_path, tiny_model_dir, tiny_data):
    """pip install -U ftctl into the venv a Slurm job runs, as the job starts (or is requeued): the trainer, holding
    the old modules it imported, imports a new one, which needs the new version of an old one: replayed with cdf42c6's
    trainer upgraded to HEAD as it loaded its tokenizer, it ended on `error: rank 0 on vm: ImportError: cannot import
    name 'SIGNAL_EARLY_S' from 'ftctl.spec'`, which said neither why nor what to do. Its error now says ftctl was
    upgraded under it and that the same launch goes on; its status is failed, as before."""
    import json

    install = tmp_path / "site"
    shutil.copytree(REPO / "ftctl", install / "ftctl", ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        **os.environ,
        "PYTHONPATH": f"{install}{os.pathsep}{REPO}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "FTCTL_STATUS_FILE": str(tmp_path / "out" / ".ftctl" / "status"),
    }
    args = [sys.executable, "-c", _UPGRADED_UNDER_IT, str(install), str(tiny_model_dir), str(tiny_data)]
    proc = subprocess.run(
        [*args, str(tmp_path / "out")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    said = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert said[-1] == {"status": "failed"}, said
    assert "said" in said[0], said  # an FtctlError: its one line, not the ImportError's traceback
    assert said[0]["said"].startswith("ftctl was upgraded while this trainer started ("), said
    assert f"{install}/ftctl/trainer/diverged.py is newer than this process" in said[0]["said"]
    assert "cannot import name 'IN_THE_NEXT_VERSION' from 'ftctl.spec'" in said[0]["said"]
    assert said[0]["said"].endswith(
        "the same `ftctl launch` goes on with the new version (from the run's last checkpoint, where it has one)"
    )


def test_an_upgrade_that_keeps_old_mtimes_is_still_seen(tmp_path):
    """uv installs by hard-linking files from its cache, which keep the cache's mtimes (a rollback to a version uv
    holds): a file's change time moves with the link, its mtime does not (review 60b)."""
    install = tmp_path / "site"
    shutil.copytree(REPO / "ftctl", install / "ftctl", ignore=shutil.ignore_patterns("__pycache__"))
    probe = (
        "import os, time\n"
        "from ftctl.trainer import run\n"
        "started = time.time()\n"
        "time.sleep(2.5)\n"
        "spec = os.path.join(os.path.dirname(run.__file__), '..', 'spec.py')\n"
        "os.utime(spec, (0, 0))  # an mtime of 1970: the change time is now\n"
        "print(run.upgraded_since_start(started))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(install), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("spec.py"), out.stdout
