"""DynamoDB: clients, items, planning (planner.py), applying (applier.py), the ledger, and the Store that puts them
behind the store protocol (store.py)."""
