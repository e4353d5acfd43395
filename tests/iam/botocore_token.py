"""Reference RDS IAM auth tokens from botocore's generate_db_auth_token, for tests/iam_token.rs.

Reads a JSON list of cases on stdin ({host, port, user, region, akid, secret, token?, epoch}) and prints a
JSON list of tokens, each signed at the case's instant: botocore's clock (botocore.auth's
get_current_datetime) is frozen per case. Signing is local; no request is sent anywhere.
"""

import datetime
import json
import sys
from unittest import mock

import botocore.auth
import botocore.session


def token(case):
    session = botocore.session.Session()
    session.set_credentials(case["akid"], case["secret"], case.get("token"))
    client = session.create_client("rds", region_name=case["region"])
    at = datetime.datetime.fromtimestamp(case["epoch"], tz=datetime.timezone.utc).replace(tzinfo=None)
    with mock.patch.object(botocore.auth, "get_current_datetime", side_effect=lambda *a, **k: at):
        return client.generate_db_auth_token(case["host"], case["port"], case["user"], Region=case["region"])


if __name__ == "__main__":
    print(json.dumps([token(c) for c in json.load(sys.stdin)]))
