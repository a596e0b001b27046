"""Every error and warning carlib raises, in one hierarchy (imports nothing of carlib).

All errors derive from :class:`CarlibError`, so the command line turns any of them into one
``carlib: error: …`` line (exit status 2) and a notebook shows one message that names the
problem and the fix. Each also derives from the built-in exception a caller would expect
(``ValueError`` for a bad value, ``FileNotFoundError`` for a missing file, ``KeyError`` for an
unknown name), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "CarlibError",
    "ConfigError",
    "UnknownNameError",
    "MissingFileError",
    "OutputExistsError",
    "DataError",
    "ArchiveError",
    "ModelError",
    "WeightsError",
    "UnsafeWeightsFileError",
    "SubmissionError",
    "TrainingError",
    "DeviceError",
    "TrialBusyError",
    "CarlibWarning",
    "DataWarning",
    "SubmissionWarning",
    "TTAWarning",
    "ModelWarning",
]


class CarlibError(Exception):
    """Something the user can fix; the message says what is wrong and what to do."""


class ConfigError(CarlibError, ValueError):
    """A parameter is unknown, of the wrong type or out of range."""


class UnknownNameError(ConfigError, KeyError):
    """A name (backbone, preset, study, …) is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingFileError(CarlibError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputExistsError(CarlibError, FileExistsError):
    """A folder or file carlib would write already holds something else; nothing was overwritten."""


class DataError(CarlibError, ValueError):
    """The data cannot be trained on or predicted as it is."""


class ArchiveError(DataError):
    """An archive is unsafe or unreadable."""


class ModelError(CarlibError, ValueError):
    """A model does not fit the task: its input size, its classes, or what it was asked to do."""


class SubmissionError(CarlibError, ValueError):
    """A submission (or the sample it must follow) is malformed."""


class WeightsError(ModelError):
    """Pretrained weights are missing, unreadable, corrupt, or do not fit the backbone; the message says how to get them."""


class UnsafeWeightsFileError(WeightsError):
    """A weights file names code to run (a pickle global outside the allow-list); refused before anything ran."""


class TrainingError(CarlibError, RuntimeError):
    """A run could not train (e.g. it failed inside a benchmark that needs its result)."""


class DeviceError(CarlibError, RuntimeError):
    """The machine lacks what a setting asks for (a TPU, GPUs for the trials)."""


class TrialBusyError(CarlibError, RuntimeError):
    """Another process is running the same trial right now."""


class CarlibWarning(UserWarning):
    """Something was skipped or looks wrong; the work went on."""


class DataWarning(CarlibWarning):
    """Files or folders were skipped; the data is still usable."""


class SubmissionWarning(CarlibWarning):
    """A test image is missing, unreadable or unexpected; the submission is still complete."""


class TTAWarning(CarlibWarning):
    """TTA did not do what it promises: every pass fed the model identical images."""


class ModelWarning(CarlibWarning):
    """A model lacks something it should carry (its class names); it was used anyway."""
