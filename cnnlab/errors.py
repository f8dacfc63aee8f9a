"""Domain exceptions: each says what went wrong and what to do next.

The CLI turns a CnnlabError into one stderr line and a non-zero exit; pages show it with st.error.
Anything that is not a CnnlabError is a bug and keeps its traceback.
"""


class CnnlabError(Exception):
    """A user-facing error: the message names the file/field at fault and the fix."""


class ConfigError(CnnlabError, ValueError):
    """A config field holds a value outside its allowed range."""


class DataError(CnnlabError):
    """The dataset cannot be used (no classes, too few images, unreadable path...)."""


class UnsafeArchiveError(DataError):
    """A zip tried to write outside its target, or breaches a size/count/ratio limit."""


class WeightsError(CnnlabError):
    """Pretrained weights are missing or do not fit the model."""


class TrainingError(CnnlabError):
    """Training cannot go on (NaN loss, out of memory, unwritable workspace...)."""


class RunNotFoundError(CnnlabError):
    """No run with that id or folder exists in the workspace."""


class ExportError(CnnlabError):
    """The exported model could not be written, or does not predict like the run."""
