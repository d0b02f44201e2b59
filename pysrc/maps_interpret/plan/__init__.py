"""The plan: every decision and check before anything is written (plan.py), from the options to the typed
settings of each room (resolve.py), with the MAPS' data groups (groups.py, participants.py)."""

from .plan import DataPass, Job, Plan, make_plan

__all__ = ["DataPass", "Job", "Plan", "make_plan"]
