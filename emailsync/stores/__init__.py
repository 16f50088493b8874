"""The stores behind one protocol (base.py), chosen in one registry (registry.py): PostgreSQL and DynamoDB, each in
its package; the ledgers and outcomes they share."""
