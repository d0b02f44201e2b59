"""Running a plan: passes over the data in batches through the engines (passes.py), ranks of a torchrun job
(distributed.py), checkpoints and parts (checkpoints.py), the means, group and folders published
(publish.py); `run(config)` ties them together (run.py). Stop signals: ../signals.py."""
