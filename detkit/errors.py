"""The exceptions detkit raises on purpose.

Every error a user can cause (bad config, unknown component, bad data file, unsafe checkpoint) is a
:class:`DetkitError`. The CLI prints these as one clear message without a traceback; anything else is
a bug and keeps its traceback.
"""


class DetkitError(Exception):
    """Base class of the errors a user can cause and fix."""


class ConfigError(DetkitError, ValueError):
    """A config file, override or component argument is wrong. The message names the dotted path."""


class RegistryError(DetkitError, LookupError):
    """Base class of registry lookup problems."""


class UnknownComponentError(RegistryError, KeyError):
    """A ``type=`` names nothing registered in the group."""

    def __str__(self):  # KeyError would otherwise quote the whole message
        return str(self.args[0]) if self.args else ""


class DuplicateComponentError(RegistryError):
    """Two distributions register the same name in one group."""


class PluginLoadError(RegistryError, ImportError):
    """An entry point could not be imported; only the names it provides are affected."""


class DataError(DetkitError, ValueError):
    """A data file (image, annotation, video) is missing, unreadable or inconsistent. Names the file."""


class CheckpointError(DetkitError, RuntimeError):
    """A checkpoint is missing, corrupt, or not safe to load with weights_only=True."""


class OutputError(DetkitError, OSError):
    """A file or folder detkit has to write cannot be written (permission denied, read-only or full
    file system). The message names the path; an ``OSError`` so callers that caught the raw error
    keep working."""
