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


RANDOM_WEIGHTS = "weights 'random'"  # how a message names training from scratch (the CLI's words)


class WeightsError(CnnlabError):
    """Pretrained weights are missing or do not fit the model.

    When training from scratch is a way out, the message is kept in two parts around that option's
    name (`reason` before it, `random_tail` after it), so a page can name it in its own words.
    """

    def __init__(
        self, reason: str, *, random_tail: str | None = None, random_name: str = RANDOM_WEIGHTS
    ) -> None:
        self.reason = reason
        self.random_tail = random_tail
        super().__init__(reason if random_tail is None else f"{reason}{random_name}{random_tail}")

    def worded(self, random_name: str) -> str:
        """The message with the train-from-scratch option called `random_name` (a page's label)."""
        if self.random_tail is None:
            return str(self)
        return f"{self.reason}{random_name}{self.random_tail}"


class TrainingError(CnnlabError):
    """Training cannot go on (NaN loss, out of memory, unwritable workspace...)."""


class RunNotFoundError(CnnlabError):
    """No run with that id or folder exists in the workspace."""


class ExportError(CnnlabError):
    """The exported model could not be written, or does not predict like the run."""
