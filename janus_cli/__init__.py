"""The `janus` command groups, a module each; `cli.py` assembles them into one app."""
