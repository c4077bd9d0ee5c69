"""Demo patients for the sandbox (package data: ``patients/*.json``; index in README.md)."""
