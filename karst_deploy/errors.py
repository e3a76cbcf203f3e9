"""The project's error types and its one exit-code policy.

Every failure a user can cause is a `KarstDeployError` whose message is one readable
paragraph naming the file, key or flag at fault and what was expected. The CLI prints
the message (never a traceback) and exits with the error's `exit_code`, from `EXIT_CODES`:

====  ==================  ==========================================================
code  name                meaning
====  ==================  ==========================================================
0     success             the command did what it was asked; every check passed
1     check failed        a verification (parity, latency, precision, int8 gate)
                          ran to completion and the artifact failed it
2     bad input           a file, key, flag or value given by the user is wrong
                          (missing, malformed, out of range, hostile), or an
                          output path is of the wrong kind (a directory for a file)
3     environment         the machine or a tool failed on valid input: a runtime
                          is missing (TensorRT, CUDA), the disk is full, the file
                          system is read-only, permission is denied, ONNX Runtime
                          or TensorRT refused or crashed
70    internal error      a bug in karst-deploy: anything that is not one of the
                          above (one paragraph; the traceback with ``--debug`` or
                          ``KARST_DEPLOY_DEBUG=1``)
75    inconclusive        a measurement ran but could not decide within its budget
                          (``bench``: the latency interval straddles the ±band);
                          sysexits' EX_TEMPFAIL: run it again, or give more time
130   interrupted         SIGINT (Ctrl-C) or SIGTERM
====  ==================  ==========================================================

`OSError` rule (`os_error`): an error that says the *path itself* is of the wrong kind or
does not exist (``EISDIR``, ``ENOTDIR``, ``ENOENT``, ``ENAMETOOLONG``, ``ELOOP``, ``EEXIST``)
is bad input (2); any other (``ENOSPC``, ``EDQUOT``, ``EROFS``, ``EACCES``, ``EPERM``,
``EIO``, ``EMFILE`` ...) is the environment refusing a well-formed request (3).
"""

from __future__ import annotations

import errno
import math
import os
import re
from typing import Any

SUCCESS = 0
CHECK_FAILED = 1
BAD_INPUT = 2
ENVIRONMENT = 3
INTERNAL_ERROR = 70
INCONCLUSIVE = 75
INTERRUPTED = 130

#: The exit-code policy, code -> (name, meaning); the README's table is this one.
EXIT_CODES: dict[int, tuple[str, str]] = {
    SUCCESS: ("success", "the command did what it was asked; every check passed"),
    CHECK_FAILED: ("check failed", "a verification ran to completion and the artifact failed it"),
    BAD_INPUT: (
        "bad input",
        "a file, key, flag or value given by the user is wrong (missing, malformed, out of "
        "range, hostile), or an output path is of the wrong kind",
    ),
    ENVIRONMENT: (
        "environment",
        "the machine or a tool failed on valid input: missing runtime, disk full, read-only "
        "file system, permission denied, ONNX Runtime or TensorRT refused",
    ),
    INTERNAL_ERROR: ("internal error", "a bug in karst-deploy (traceback with --debug)"),
    INCONCLUSIVE: (
        "inconclusive",
        "a measurement ran but was too noisy to decide within its budget (bench: the latency "
        "interval straddles the band); run it again on a quieter machine or with more time",
    ),
    INTERRUPTED: ("interrupted", "SIGINT or SIGTERM"),
}

#: Where an internal error should be reported.
REPORT_URL = "https://github.com/karst-deploy/karst-deploy/issues"

#: Longest user-supplied value echoed whole in a message.
ECHO_LIMIT = 200


def clip(value: Any, limit: int = ECHO_LIMIT) -> str:
    """`value` as text for a message, cut to `limit` characters with an ellipsis.

    Every message that echoes a user value (a path, a key, a name) goes through here so that
    a 100,000-character name cannot flood the terminal.
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text)} characters)"


#: A run of non-space characters this long in a message is clipped by `clip_words`.
WORD_LIMIT = 1000


def clip_words(message: str) -> str:
    """`message` with every run of more than `WORD_LIMIT` non-space characters clipped.

    The CLI's last line of defence for messages that echo a user value without `clip`.
    """
    return re.sub(rf"\S{{{WORD_LIMIT + 1},}}", lambda m: clip(m.group()), message)


class KarstDeployError(Exception):
    """Base class: a failure with a message meant for the user.

    Library code names the Python *parameters* at fault, never a command-line flag, and
    lists them in `parameters`; the CLI rewrites them to its flags (`with_flags`), so a
    Python caller of ``verify_parity(atol_scale=-1)`` reads ``atol_scale`` and a CLI user
    ``--atol``.
    """

    exit_code = BAD_INPUT

    def __init__(self, *args: object, parameters: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.parameters = tuple(parameters)


class InputError(KarstDeployError):
    """A file, key, flag or value given by the user is not what was expected."""


class CheckpointError(InputError):
    """A backbone checkpoint is missing, unreadable or does not fit the model."""


class AdapterFileError(InputError):
    """An adapter directory is missing, malformed or does not fit its backbone."""


class MergeError(KarstDeployError):
    """Folding adapters into dense weights produced an unusable result."""


class OutputExistsError(InputError):
    """An output would overwrite an existing artifact and --force was not given."""


class EnvironmentFailure(KarstDeployError):
    """The machine or a tool failed on valid input (disk full, read-only, a runtime refused)."""

    exit_code = ENVIRONMENT


class ToolError(EnvironmentFailure):
    """ONNX Runtime, TensorRT or another tool refused or crashed on a well-formed request."""


class MissingDependencyError(EnvironmentFailure):
    """An optional runtime (TensorRT, onnxruntime-gpu, CUDA) is not available here."""


class VerificationError(KarstDeployError):
    """A check ran to completion and the artifact failed it."""

    exit_code = CHECK_FAILED


class InconclusiveError(KarstDeployError):
    """A measurement ran to its budget and can neither confirm nor refute the claim."""

    exit_code = INCONCLUSIVE


_PATH_ERRNOS = {
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENOENT,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EEXIST,
}


def os_error(exc: OSError) -> KarstDeployError:
    """The project error for an `OSError` that escaped a command (rule in the module docstring)."""
    where = exc.filename if exc.filename is not None else "a file"
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno in _PATH_ERRNOS:
        return InputError(
            f"'{clip(where)}': {reason} (errno {errno.errorcode.get(exc.errno, exc.errno)}); "
            "check the path given on the command line."
        )
    hint = {
        errno.ENOSPC: "free some space or choose another --out",
        errno.EDQUOT: "free some space or choose another --out",
        errno.EROFS: "the file system is mounted read-only; choose another --out",
        errno.EACCES: "you may not write or read there; check its permissions",
        errno.EPERM: "you may not write or read there; check its permissions",
    }.get(exc.errno, "the operating system refused the operation")
    code = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__
    return EnvironmentFailure(f"Cannot use '{clip(where)}': {reason} ({code}); {hint}.")


def check_range(
    name: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
) -> None:
    """Refuse `value` of flag/key `name` unless it is finite and in [low, high] (None: open).

    `low_open` makes the lower bound exclusive (``> low``).
    """
    if value is None:
        return
    bounds = f"{'>' if low_open else '>='} {low}" if low is not None else ""
    if high is not None:
        bounds = f"{bounds} and <= {high}" if bounds else f"<= {high}"
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{name} must be a finite number {bounds}, got {value}.")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        raise InputError(f"{name} must be {bounds}, got {clip(value)}.")


#: The command-line flag of each library parameter whose flag is not simply ``--`` plus the
#: parameter with ``-`` for ``_`` (``batch_size`` → ``--batch-size``). The CLI's one map
#: from library vocabulary to its own (`with_flags`); a command whose flag differs for one
#: parameter passes its own entries (`karst_deploy.cli.COMMAND_FLAGS`).
PARAMETER_FLAGS: dict[str, str] = {
    "atol_scale": "--atol",
    "source": "--onnx",
    "adapter_dir": "--adapter",
    "workspace_mib": "--workspace",
    "builder_optimization_level": "--builder-opt-level",
    "version_compatible": "--version-compat",
    "majors": "--tensorrt-version",
    "rule": "--budget-rule",
    "use_cache": "--calib-cache",
}


def flag_for(parameter: str, flags: dict[str, str] | None = None) -> str:
    """The flag the CLI gives `parameter` (`flags`, then `PARAMETER_FLAGS`, else ``--`` +
    dashed name)."""
    if flags and parameter in flags:
        return flags[parameter]
    return PARAMETER_FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


def with_flags(error: KarstDeployError, flags: dict[str, str] | None = None) -> str:
    """`error`'s message with each of its `parameters` named by its flag (`flag_for`).

    The first place a parameter stands as a word of its own is replaced (``samples``, not
    the one inside ``calib_samples``, a quoted value or a path, nor a count such as ``2
    rounds``): messages name the parameter before any value they echo. A boolean is named
    with its value, wherever it stands: ``force=True`` becomes its flag (``--force``) and
    ``use_cache=False`` the flag's negation (``--no-calib-cache``).
    """
    message = str(error)
    for parameter in error.parameters:
        flag = flag_for(parameter, flags)
        name = rf"(?<![\w./'\"-])(?<!\d ){re.escape(parameter)}"
        message, switched = re.subn(
            name + r"=(True|False)\b",
            lambda m, flag=flag: flag if m[1] == "True" else "--no-" + flag[2:],
            message,
            count=1,
        )
        if not switched:
            message = re.sub(name + r"(?![\w/'\"-]|\.\w)", flag, message, count=1)
    return message
