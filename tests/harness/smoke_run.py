"""One tiny smoke pretraining run through ``ensure_run`` (the product path), for tests that need processes.

    python tests/harness/smoke_run.py MAX_STEPS [CKPT_INTERVAL]

Store, runs and data folders come from MLFLOW_TRACKING_URI, BEIT3_RUNS_DIR and BEIT3_DATA_ROOT. Prints
one JSON line: the record's status, run id and weights.
"""
import dataclasses
import json
import sys

import torch


def smoke_config(max_steps: int, ckpt_interval: int = 1):
    from harness.experiments import recipe_configs
    from harness.profiles import get_profile

    (cfg,) = recipe_configs("beit3", get_profile("smoke"))
    return dataclasses.replace(cfg, max_steps=max_steps, warmup_steps=1, ckpt_interval=ckpt_interval,
                               log_interval=1, progress=False)


if __name__ == "__main__":
    from harness.experiments import ensure_run

    torch.set_num_threads(1)
    steps = int(sys.argv[1])
    interval = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    record = ensure_run(smoke_config(steps, interval))
    print(json.dumps({"status": record.status, "run_id": record.run_id, "checkpoint": record.checkpoint}), flush=True)
