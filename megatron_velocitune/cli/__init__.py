"""The command-line tools, installed as ``velocitune-*`` console scripts (see setup.py).

Each module has ``main(argv=None) -> int``; ``tools/<name>.py`` runs the same ``main`` from a
checkout without installing the package.
"""
