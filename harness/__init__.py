"""The BEiT-3 reproducibility harness: CLI, profiles, MLflow tracking, paper tables and reports.

Entry point: the ``harness`` command (``harness.cli:main``); see ``harness --help``.
"""
