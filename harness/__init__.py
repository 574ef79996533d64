"""The BEiT-3 reproducibility harness: CLI, profiles, MLflow tracking, paper tables and reports.

Entry point: the ``harness`` command (``harness.cli:main``); see ``harness --help``.
"""

import os

# OpenMP threads that spin while waiting starve each other (and everything else) as soon as another
# process shares the cores: on 2 cores a tiny training step went from 0.11 s to 8.8 s under load.
# Read when torch loads libgomp, so it must be set before torch is imported; a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
