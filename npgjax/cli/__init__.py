"""The command line: ``python -m npgjax.train`` (and ``npgjax-train``).

Modules in data-flow order: :mod:`~npgjax.cli.args` (parsing), :mod:`~npgjax.cli.exports`
(the exported programs' cache), :mod:`~npgjax.cli.compile` (ahead-of-time compilation),
:mod:`~npgjax.cli.warm` (warm starts without the trainer), :mod:`~npgjax.cli.io`
(files and checkpoints), :mod:`~npgjax.cli.report` (summary and printout),
:mod:`~npgjax.cli.plots` (figures) and :mod:`~npgjax.cli.train` (the loop).
"""
