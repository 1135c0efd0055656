"""Fuzzing: the atheris targets (``targets/``), their runner (``run.py``) and seeds.

Not imported by tlsgate; a package only so that ``fuzz/run.py`` is ``fuzz.run``
to mypy, not a second top-level ``run`` beside ``bench/run.py``. See README.md.
"""
