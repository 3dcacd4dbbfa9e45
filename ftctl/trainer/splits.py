"""Which files of a directory a dataset role reads: a directory of several splits is never read whole.

A local directory, an object-store prefix or a Hub dataset repository (``hf://datasets/ORG/NAME``) often holds
train and test files side by side (``data/train-00000-of-00001.parquet``, ``data/test-...``), or names its splits in
a dataset card (README.md's ``configs:``, ultrachat_200k's ``train_sft``/``test_sft``). `datasets` reads such a
directory as splits; reading every file would train on the test split. Training data gets the ``train`` split,
held-out data the ``test`` split, else ``validation`` (TRL's dataset_train_split / dataset_test_split defaults); a
directory without the one asked for is refused with its splits and a pattern for each. A directory whose file names
name no split is one dataset, every file read.
"""

from __future__ import annotations

import posixpath

from ftctl import storage
from ftctl.errors import FtctlError
from ftctl.tool_vocabulary import yaml_value

# the data files ftctl reads, in any case: JSON (gzipped too), Parquet, and the Arrow files of a `datasets`
# save_to_disk directory
EXTENSIONS = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".parquet", ".arrow")
KINDS = ".json, .jsonl (.gz), .parquet or .arrow"  # EXTENSIONS, as messages name them
# files a directory of data may hold that ftctl does not read, named where one is left out (unread_files)
NOT_READ = (".csv", ".tsv", ".txt", ".gz", ".zst", ".bz2", ".xz", ".zip", ".xlsx")


def is_data_file(name: str) -> bool:
    """A file ftctl reads as data, by its name (EXTENSIONS, in any case)."""
    return name.lower().endswith(EXTENSIONS)


# the split a directory or repository of several gives, by role: TRL's dataset_train_split and dataset_test_split
# defaults (and the validation split where there is no test one)
SPLITS = {False: ("train",), True: ("test", "validation")}


def split_files(fs, path: str, root: str, held_out: bool) -> list[str]:
    """The data files of a directory (local, object storage, a Hub dataset repository): all of them, or where
    they form several splits (train/test/validation by file or directory name, or a dataset card's configs, as
    `datasets` finds them) the one training reads (train) or held-out data does (test, else validation); a
    directory without it names each split's files to choose from."""
    top = root.rstrip("/")
    splits, by_names = _splits(fs, path, top)
    if splits is None or by_names:
        every = _data_files(fs, top)
    if splits is None:
        return every
    flag = "--eval-data" if held_out else "--data"
    listed = ", ".join(f"{k} ({len(v)} file{'s' if len(v) > 1 else ''})" for k, v in splits.items())
    named = {f for files in splits.values() for f in files}
    if by_names and (left := [posixpath.relpath(f, top) for f in every if f not in named]):
        # `datasets` reads only the files whose names name a split: a directory of data.jsonl and val.jsonl trained
        # on val.jsonl alone
        some = ", ".join(left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
        raise FtctlError(
            f"{path} mixes the files of splits ({listed}) with files that name none ({some}): only the splits' "
            "files would be read. "
            f"Name the files to read, e.g. {flag} '{storage.join(path, *left[0].split('/'))}' (a pattern reads "
            "several), or rename them (train.jsonl, test.jsonl ...)."
        )
    name = next((n for n in SPLITS[held_out] if n in splits), None)
    if name is None and len(splits) == 1 and not held_out and not set(splits) & set(SPLITS[True]):
        name = next(iter(splits))  # one split, whatever its name (a dataset card's train_sft), but not a held-out one
    if name is None:
        first = next(iter(splits))
        raise FtctlError(
            f"{path} has no {' or '.join(map(repr, SPLITS[held_out]))} split; its splits: {listed}. Name the files "
            f"of the one to use, e.g. {flag} '{_split_pattern(path, top, first, splits[first])}'."
        )
    return splits[name]


def _data_files(fs, top: str) -> list[str]:
    """The data files below ``top`` as `datasets` reads a directory (_read_as_data)."""
    return sorted(p for p in fs.find(top) if _read_as_data(p, top))


def unread_files(path: str) -> list[str]:
    """The files of a local directory ``path`` that look like data and are not read (NOT_READ: data.csv beside
    data.jsonl), relative to it; [] for anything else."""
    import os

    if not os.path.isdir(path):
        return []
    found = []
    for here, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        rel = os.path.relpath(here, path)
        found += [
            os.path.normpath(os.path.join(rel, f))
            for f in sorted(files)
            if f.lower().endswith(NOT_READ) and not is_data_file(f)
        ]
    return found


def _read_as_data(path: str, top: str) -> bool:
    """A data file of the directory ``top`` as `datasets` takes one: not a hidden one or one in a hidden or ``__``
    directory (.ipynb_checkpoints/, __pycache__/), nor its own metadata (dataset_info.json ...)."""
    from datasets import config

    meta = {
        config.DATASETDICT_JSON_FILENAME,
        config.DATASET_INFO_FILENAME,
        config.DATASETDICT_INFOS_FILENAME,
        config.DATASET_STATE_JSON_FILENAME,  # save_to_disk's state.json beside its .arrow files
    }
    *dirs, name = posixpath.relpath(path, top).split("/")
    return (
        is_data_file(path)
        and name not in meta
        and not name.startswith(".")
        and not any(d.startswith((".", "__")) for d in dirs)
    )


def _splits(fs, path: str, top: str) -> tuple[dict[str, list[str]] | None, bool]:
    """(split -> its data files, whether the files' names gave them), as `datasets` finds a directory's splits:
    the dataset card's (README.md: its default config's data_files), else by file and directory names
    (``train-00000-of-00002.parquet``, ``data/test/``); None where they name none (every file is the one split)."""
    import yaml
    from datasets.data_files import DEFAULT_PATTERNS_ALL, _get_data_files_patterns, sanitize_patterns
    from datasets.utils.metadata import MetadataConfigs

    patterns = None
    try:
        card = fs.cat_file(f"{top}/README.md").decode() if fs.exists(f"{top}/README.md") else ""
        head = card.split("\n---", 1)[0][4:] if card.startswith("---\n") else ""
        data = yaml_value(head) if head else None  # (a card someone wrote: its header may be any YAML)
        configs = MetadataConfigs.from_dataset_card_data(data) if isinstance(data, dict) else None
        default = configs.get_default_config_name() if configs else None
        if default and configs[default].get("data_files"):
            patterns = sanitize_patterns(configs[default]["data_files"])
    except (ValueError, TypeError, yaml.YAMLError, UnicodeDecodeError):  # a card that does not read (aliases past
        # YAML_VALUES_MAX too: a downloaded card's 'billion laughs'): the files' names decide
        patterns = None
    if patterns is None:
        try:  # datasets' get_data_patterns, through this filesystem (datasets' own reads HF_ENDPOINT at its import)
            patterns = _get_data_files_patterns(lambda pattern: fs.glob(f"{top}/{pattern}"))
        except FileNotFoundError:  # no file at all
            return None, True
        except ValueError as e:  # split names datasets refuses (data/train-v2-00000-of-00001.parquet)
            raise FtctlError(f"Cannot tell the splits of {path} ({e}): name the files to read.") from None
        if patterns == {str(k): v for k, v in DEFAULT_PATTERNS_ALL.items()}:
            return None, True
        by_names = True
    else:
        by_names = False
    splits = {}
    for split, pats in patterns.items():
        files = sorted({f for p in pats for f in fs.glob(f"{top}/{p}") if _read_as_data(f, top)})
        if files:
            splits[str(split)] = files
    return splits or None, by_names


def _split_pattern(path: str, root: str, split: str, files: list[str]) -> str:
    """A pattern for a split's files (``hf://.../data/train_sft-*.parquet``), else its one file."""
    rel = [posixpath.relpath(f, root) for f in files]
    places = {(posixpath.dirname(r), posixpath.splitext(r)[1]) for r in rel}
    if len(rel) > 1 and len(places) == 1 and all(posixpath.basename(r).startswith(f"{split}-") for r in rel):
        where, ext = places.pop()
        return storage.join(path, *[p for p in where.split("/") if p], f"{split}-*{ext}")
    return storage.join(path, *rel[0].split("/"))
