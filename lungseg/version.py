"""The version of lungseg, recorded in every model it writes (``CHANGELOG.md`` says what each one
changed)."""

__version__ = "0.3.0"
