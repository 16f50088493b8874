"""emailsync: declarative plan-then-apply email migrations."""

__version__ = "0.2.0"
