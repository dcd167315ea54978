"""``python -m lungseg.bench``: the same as ``lungseg-bench``."""

from lungseg.bench import cli

cli()
