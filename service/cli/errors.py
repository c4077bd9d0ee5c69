"""The two failures the commands report as one line on stderr (exit code 1)."""


class CliError(Exception):
    """One line for stderr; ends the command with exit code 1."""


class SandboxError(Exception):
    """A sandbox or loading step failed; the message is one line saying which step and why."""
