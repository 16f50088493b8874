"""The engine: a builder makes the plan (planner.py), the apply order is data (stages.py), an executor runs
independent steps at once (executor.py), and apply, verify, rollback and diff walk the plan through the store
protocol (stores/base.py) without naming a store."""
