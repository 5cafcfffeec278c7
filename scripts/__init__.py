"""Command-line tools of the repository (``make demo``, ``make stack``, ``make bench``)."""
