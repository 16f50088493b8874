#!/bin/sh
# Generated from emailsync/sandbox.py (tests/test_examples.py keeps it in step). The demo HR tables.
set -eu
ddb() { aws dynamodb --endpoint-url "$DYNAMODB_ENDPOINT" --region us-east-1 "$@"; }
until ddb list-tables >/dev/null 2>&1; do sleep 1; done  # DynamoDB Local takes a moment to start
ddb create-table --table-name hr-profiles --key-schema AttributeName=email,KeyType=HASH --attribute-definitions AttributeName=email,AttributeType=S --billing-mode PAY_PER_REQUEST >/dev/null
ddb put-item --table-name hr-profiles --item '{"contact": {"M": {"managerEmail": {"S": "ceo@oldco.com"}, "phone": {"S": "+1 555 0100"}}}, "email": {"S": "jane.doe@oldco.com"}, "name": {"S": "Jane Doe"}, "watchers": {"L": [{"S": "ceo@oldco.com"}, {"S": "li@partner.org"}]}}'
ddb put-item --table-name hr-profiles --item '{"delegates": {"SS": ["jane.doe@oldco.com", "li@partner.org"]}, "email": {"S": "raj@oldco.com"}, "name": {"S": "Raj Patel"}}'
ddb put-item --table-name hr-profiles --item '{"desk": {"N": "42"}, "email": {"S": "raj.patel@newco.com"}, "name": {"S": "Raj P."}}'
ddb create-table --table-name userAuthentication --key-schema AttributeName=email,KeyType=HASH AttributeName=clientId,KeyType=RANGE --attribute-definitions AttributeName=email,AttributeType=S AttributeName=clientId,AttributeType=S --billing-mode PAY_PER_REQUEST >/dev/null
ddb put-item --table-name userAuthentication --item '{"clientId": {"S": "acme"}, "email": {"S": "ceo@oldco.com"}, "passwordHash": {"S": "$2b$12$ceo"}}'
ddb put-item --table-name userAuthentication --item '{"clientId": {"S": "acme"}, "email": {"S": "jane.doe@oldco.com"}, "passwordHash": {"S": "$2b$12$jane"}}'
ddb put-item --table-name userAuthentication --item '{"clientId": {"S": "globex"}, "email": {"S": "li@partner.org"}, "passwordHash": {"S": "$2b$12$li"}}'
