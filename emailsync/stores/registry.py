"""The one place that names the stores: which Store serves each target of targets.yaml, and how each store
connects. `connect` and `client_for` are the seam: everything that reaches a database or a table (plan, apply,
verify, discover, unlock) goes through them, so a test or a tool patches connections and clients here, once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from emailsync.config import DynamoTarget, LoadedTargets, PostgresTarget
from emailsync.engine.executor import DEFAULT_PACE, Pace
from emailsync.engine.online import DEFAULT_ONLINE, Online
from emailsync.engine.stages import stores_in_order
from emailsync.plan import Store as StoreKind
from emailsync.stores.base import Store

if TYPE_CHECKING:
    import psycopg
    from types_boto3_dynamodb.client import DynamoDBClient


def connect(target: PostgresTarget) -> psycopg.Connection:
    """A connection to a PostgreSQL target (see stores/postgres/connection.py)."""
    from emailsync.stores.postgres import connection

    return connection.connect(target)


def client_for(target: DynamoTarget, probe: bool = False, connections: int = 10) -> DynamoDBClient:
    """A client of a DynamoDB target (see stores/dynamodb/client.py)."""
    from emailsync.stores.dynamodb import client

    return client.client_for(target, probe=probe, connections=connections)


def kind_of(target: PostgresTarget | DynamoTarget) -> StoreKind:
    return "postgres" if isinstance(target, PostgresTarget) else "dynamodb"


def targets(loaded: LoadedTargets) -> dict[str, PostgresTarget | DynamoTarget]:
    """Every target of the targets file by name."""
    out: dict[str, PostgresTarget | DynamoTarget] = {t.name: t for t in loaded.config.postgres}
    return out | {t.name: t for t in loaded.config.dynamodb}


def stores(
    loaded: LoadedTargets,
    names: Iterable[str] | None = None,
    *,
    pace: Pace = DEFAULT_PACE,
    online: Online = DEFAULT_ONLINE,
) -> list[Store]:
    """A Store per target (those named, when `names` is given), in the order apply runs them (stages.py), each
    store's targets in the targets file's order. Connections and clients are made through this module's seam,
    looked up when used, so a patch of connect or client_for reaches every store. `pace`: how hard DynamoDB
    targets are pressed (requests in flight, capacity caps); `online`: batches, throttles and the pause of an
    apply (engine/online.py)."""
    wanted = None if names is None else set(names)
    pg = [i for i, t in enumerate(loaded.config.postgres) if wanted is None or t.name in wanted]
    ddb = [i for i, t in enumerate(loaded.config.dynamodb) if wanted is None or t.name in wanted]
    by_kind: dict[str, list[Store]] = {"postgres": [], "dynamodb": []}
    # Each store's package (and its driver: psycopg, botocore) is imported only when a target uses it.
    if pg:
        from emailsync.stores.postgres.store import PostgresStore

        by_kind["postgres"] = [PostgresStore(loaded, i, lambda t: connect(t), online) for i in pg]
    if ddb:
        from emailsync.stores.dynamodb.store import DynamoStore

        by_kind["dynamodb"] = [DynamoStore(loaded, i, _client_for_store, pace, online) for i in ddb]
    return [s for kind in stores_in_order() for s in by_kind[kind]]


def _client_for_store(target: DynamoTarget, probe: bool = False, **kw: Any) -> DynamoDBClient:
    return client_for(target, probe=probe, **kw)
