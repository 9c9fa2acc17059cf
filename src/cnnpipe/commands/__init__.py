"""One thin module per ``cnnpipe`` command; each defines ``command`` (a click command)."""
