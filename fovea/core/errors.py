"""The one error type for user mistakes: the CLI prints its message and exits with code 2."""


class FoveaError(Exception):
    """A mistake the user can fix (bad config, unknown plugin, missing file).

    The message says what is wrong and what to do; the CLI shows it without a traceback.
    """


class ConfigError(FoveaError):
    """The configuration file or an override is invalid."""


class PluginError(FoveaError):
    """A plugin failed to load, or a part name is unknown or registered twice."""
