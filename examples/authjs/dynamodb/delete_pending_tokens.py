"""Delete the pending magic links (VT#<address> items) of every old address in email_mappings.json.

emailsync leaves verification tokens alone on purpose (see targets.yaml and ../README.md): run this right after
`emailsync apply`, from this folder:

    python delete_pending_tokens.py --endpoint-url http://localhost:8000     # leave --endpoint-url out on AWS

The people concerned just ask for a new link, at their new address. Auth.js lowercases the addresses it sends links
to, so the items are looked up under the lowercased old address (and under the address as the mappings spell it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def delete_pending_tokens(
    client: Any, table: str = "next-auth", mappings: Path = HERE / "email_mappings.json"
) -> list[str]:
    """Delete every item whose pk is VT#<old address>; returns the deleted items' pk#sk, sorted."""
    olds = {m["old_email"] for m in json.loads(mappings.read_text())}
    deleted = []
    for old in sorted(olds | {o.lower() for o in olds}):
        kwargs: dict[str, Any] = dict(
            TableName=table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :vt)",
            ExpressionAttributeValues={":pk": {"S": f"VT#{old}"}, ":vt": {"S": "VT#"}},
            ConsistentRead=True,
        )
        while True:
            page = client.query(**kwargs)
            for item in page["Items"]:
                key = {"pk": item["pk"], "sk": item["sk"]}
                client.delete_item(TableName=table, Key=key)
                deleted.append(f"{item['pk']['S']} {item['sk']['S']}")
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return sorted(deleted)


def main() -> None:
    import boto3

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint-url", default=None)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--table", default="next-auth")
    args = parser.parse_args()
    client = boto3.client("dynamodb", endpoint_url=args.endpoint_url, region_name=args.region)
    for line in delete_pending_tokens(client, args.table):
        print("deleted", line)


if __name__ == "__main__":
    main()
