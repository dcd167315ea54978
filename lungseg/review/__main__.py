"""``python -m lungseg.review FOLDER``: the same as ``lungseg-review``."""

from lungseg.review.cli import main

if __name__ == "__main__":
    main()
