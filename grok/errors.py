"""The errors a user can act on: each message is one line, naming the field and what is allowed."""


class ConfigError(ValueError):
    """A config value outside what is allowed."""


class Refused(ConfigError):
    """A command refused before it changed anything: a resume that does not match its checkpoint, a
    run directory another process is writing. It writes nothing into the run it refused."""
