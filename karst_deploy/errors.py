"""The project's error types.

Every failure a user can cause is a `KarstDeployError` whose message is one readable
paragraph naming the file, key or flag at fault and what was expected. The CLI prints
the message (never a traceback) and exits with the error's `exit_code`: 2 for bad input,
1 for a verification that ran and failed.
"""

from __future__ import annotations


class KarstDeployError(Exception):
    """Base class: a failure with a message meant for the user."""

    exit_code = 2


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


class MissingDependencyError(KarstDeployError):
    """An optional runtime (TensorRT, onnxruntime-gpu, CUDA) is not available here."""


class VerificationError(KarstDeployError):
    """A check ran to completion and the artifact failed it."""

    exit_code = 1
