"""Create the Auth.js DynamoDB adapter's table and put this example's items in it.

    python seed.py --endpoint-url http://localhost:8000      # DynamoDB Local (docker compose up -d dynamodb)

The table is the one @auth/dynamodb-adapter expects by default (table.json): partition key `pk`, sort key `sk`, and a
global secondary index GSI1 on `GSI1PK` / `GSI1SK`. The items (items.json) are written the way the adapter writes
them. The layout is from https://github.com/nextauthjs/next-auth, file packages/adapter-dynamodb/src/index.ts at
commit e58c20aa2a356f7569af52d6efd2d769d675e9c5 (the same layout, with the prefixes made configurable, at commit
0183fbea9ccea181b263f230de62ddc384a26caf). Version: @auth/dynamodb-adapter (the package.json of
packages/adapter-dynamodb at commit 0314cf81cde1bdfba73053253e4e1c0a56724460 says 1.0.16; the source file carries no
version of its own). table.json is the table of that file's documentation (its CloudFormation and CDK snippets). The
items, by kind:

    user                pk = sk = USER#<id>; GSI1PK = GSI1SK = USER#<email>; id, name, email, emailVerified, image
    account             pk = USER#<userId>, sk = ACCOUNT#<provider>#<providerAccountId>;
                        GSI1PK = ACCOUNT#<provider>, GSI1SK = ACCOUNT#<providerAccountId>
    session             pk = USER#<userId>, sk = SESSION#<sessionToken>; GSI1PK = GSI1SK = SESSION#<sessionToken>
    verification token  pk = VT#<identifier (the address)>, sk = VT#<token>, identifier, token, expires

On AWS you would also turn on TTL with the attribute `expires` (the adapter's docs say so); it changes nothing here.
Needs boto3 (installed with emailsync) and credentials of any value for DynamoDB Local.
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def table_definition() -> dict[str, Any]:
    """CreateTable's input (table.json; `aws dynamodb create-table --cli-input-json file://table.json` takes it too)."""
    definition: dict[str, Any] = json.loads((HERE / "table.json").read_text())
    return definition


def seed_items() -> list[dict[str, Any]]:
    """The items as plain values (numbers as Decimal, as boto3 wants them)."""
    items: list[dict[str, Any]] = json.loads((HERE / "items.json").read_text(), parse_float=Decimal, parse_int=Decimal)
    return items


def seed(client: Any) -> None:
    """Create the table (waiting until it is active) and put every item, with a low-level boto3 client."""
    from boto3.dynamodb.types import TypeSerializer

    definition = table_definition()
    client.create_table(**definition)
    client.get_waiter("table_exists").wait(TableName=definition["TableName"])
    ser = TypeSerializer()
    for item in seed_items():
        client.put_item(TableName=definition["TableName"], Item={k: ser.serialize(v) for k, v in item.items()})


def main() -> None:
    import boto3

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint-url", default="http://localhost:8000")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    seed(boto3.client("dynamodb", endpoint_url=args.endpoint_url, region_name=args.region))
    print(f"created {table_definition()['TableName']} with {len(seed_items())} items at {args.endpoint_url}")


if __name__ == "__main__":
    main()
