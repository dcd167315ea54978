"""Review the masks lungseg.predict wrote in a local browser page, sorted by doubt
(``lungseg-review FOLDER``).

``films`` reads a prediction folder; ``decisions`` keeps the reviewer's accept / reject / note per
film in its ``review.csv`` and counts them (predict's summary and evaluate's report use the
counts); ``relabel`` copies the rejected films out for correction; ``images`` draws the pictures;
``server`` is the page (FastAPI, imported only when the page is served).
"""

LOOPBACK = "127.0.0.1"  # the page is served to this machine only unless --host says otherwise
DEFAULT_PORT = 8765
