"""The one exception type users see.

Anything raised as ``FtctlError`` reaches the user as its message alone (no traceback) and a
non-zero exit; ``FTCTL_DEBUG=1`` shows the traceback too. The message should say the fix, not
only the fault.
"""


class FtctlError(Exception):
    """A user-facing error: bad input, an unfit plan, a scheduler refusal."""

    exit_code = 2
    prefix = "error: "  # what the command line prints before the message


class Stopped(FtctlError):
    """A run stopped as asked (Ctrl-C, a signal, `ftctl cancel`) before its end: no error, but not finished either
    (a non-zero exit); the message says what a relaunch resumes."""

    prefix = ""


class NotSent(FtctlError):
    """A job refused where it was sent (sbatch, docker run said no): nothing runs it, so the launch's files in its run
    dir are put back. A scheduler that did not answer may have taken the job: that is a plain FtctlError."""


class NoAnswer(FtctlError):
    """A command that did not answer in time: whether it acted is not known."""


def did_you_mean(word: str, choices) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close. A snake_case word whose every part
    some choices hold names those (up to 3, closest first): per_device_batch_size was "Did you mean
    'per_device_eval_batch_size'?" alone (closer by spelling than the train one people meant), eval_batch_size
    "'global_batch_size'?"."""
    import difflib

    choices = list(choices)

    def ratio(choice) -> float:
        return difflib.SequenceMatcher(None, word, str(choice)).ratio()

    parts = set(word.split("_"))
    holding = [c for c in choices if len(parts) > 1 and parts <= set(str(c).split("_")) and ratio(c) >= 0.5]
    if 0 < len(holding) <= 3:
        named = [repr(c) for c in sorted(holding, key=ratio, reverse=True)]
        return f" Did you mean {', '.join(named[:-1]) + ' or ' if len(named) > 1 else ''}{named[-1]}?"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def yaml_problem(e) -> str:
    """A YAML parser's error in one line: where (line, column) and what (PyYAML's message spans several lines, and
    its first one, "while parsing a flow node", says neither)."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    return f"{where}{what}" + (f" ({context})" if context else "")


def read_config_text(path, what: str) -> str:
    """A config file's text (a run file, the user config), or FtctlError saying why it cannot be read: not UTF-8 text
    (a binary file given by mistake) or not readable by this user, where Python's error was a traceback."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FtctlError(f"{path} is not text (byte {e.start + 1} is no UTF-8): give {what}, saved as UTF-8.") from None
    except OSError as e:
        raise FtctlError(
            f"{path} cannot be read ({e.strerror or e}): fix its permissions, or give another file."
        ) from None
