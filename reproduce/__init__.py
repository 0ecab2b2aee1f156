"""One entry point per table and figure of the paper: `python -m reproduce list`."""
