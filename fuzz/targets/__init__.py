"""The fuzz targets: run each with ``python -m fuzz.targets.fuzz_<name>`` (see fuzz/README.md)."""
