"""The ``sleep-cds`` command line and the local sandbox (dev tooling).

It sits on top of everything: nothing in the service imports it (``no-cli-imports`` in
pyproject.toml). ``main`` builds the parser; each other module owns one command or one piece of the
sandbox.
"""
