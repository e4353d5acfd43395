"""A local stand-in for RDS's IAM authentication plugin, run by PAM's pam_exec for each login.

    auth required pam_exec.so expose_authtok quiet PYTHON -I -S verify_token.py [--site-packages DIR] CONFIG LOG

pam_exec writes the password the client sent (the RDS IAM auth token) on stdin and sets PAM_USER to the
database user logging in. The token is accepted (exit 0) only if it is a SigV4 presigned
`GET https://HOST:PORT/?Action=connect&DBUser=USER` for service `rds-db` whose signature botocore's own
SigV4QueryAuth recomputes from a secret key in CONFIG, is not expired, names the user logging in and the
host:port this server was told it is. Anything else exits 1.

CONFIG is a JSON file the test harness writes with mode 0600 (refused otherwise):

    {"host": "127.0.0.1", "port": 3306, "region": "us-east-1",
     "credentials": [{"access_key_id": "...", "secret_access_key": "...", "session_token": null}]}

Every attempt appends one JSON line to LOG (created 0600): {"time", "service", "user", "rhost",
"result": "accepted"|"refused", "reason", "detail"}, so a test can tell a refusal for the right reason
from a broken setup. Nothing
secret is written anywhere: never the token, its signature, a session token or a secret key; exception
messages (which could quote the input) are reduced to their type. stdout and stderr stay empty.

--site-packages DIR puts the test venv's site-packages first on sys.path, for servers whose system user
cannot execute the venv's interpreter (PostgreSQL runs as `postgres`, and the venv's python lives under a
0700 /root): the system python3 of the same minor version then runs the same pinned botocore.
"""

import datetime
import hmac
import json
import os
import re
import stat
import sys
import time

# RDS tokens are valid for at most 15 minutes; botocore always signs X-Amz-Expires=900.
MAX_EXPIRES = 900
# A token dated further than this in the future (clock skew) is refused.
MAX_FUTURE_SKEW = 300
MAX_TOKEN_BYTES = 16384
TOKEN_RE = re.compile(r"^(?P<host>[A-Za-z0-9.\-\[\]:]+?):(?P<port>[0-9]{1,5})/\?(?P<query>[^\s#]+)$")
REQUIRED = (
    "Action",
    "DBUser",
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
OPTIONAL = ("X-Amz-Security-Token",)


class Refused(Exception):
    def __init__(self, reason, detail=""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def parse_args(argv):
    site_packages = None
    args = list(argv)
    if len(args) >= 2 and args[0] == "--site-packages":
        site_packages = args[1]
        args = args[2:]
    if len(args) != 2:
        raise Refused("config-error", "usage: verify_token.py [--site-packages DIR] CONFIG LOG")
    return site_packages, args[0], args[1]


def load_config(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077 or not stat.S_ISREG(st.st_mode):
            raise Refused("config-error", "config must be a regular file with mode 0600")
        with os.fdopen(fd, "r", encoding="utf-8") as f:
            fd = None
            cfg = json.load(f)
    finally:
        if fd is not None:
            os.close(fd)
    for key in ("host", "port", "region", "credentials"):
        if key not in cfg:
            raise Refused("config-error", f"config lacks {key!r}")
    return cfg


def read_token():
    raw = sys.stdin.buffer.read(MAX_TOKEN_BYTES + 2)
    if len(raw) > MAX_TOKEN_BYTES:
        raise Refused("malformed", "token too long")
    # pam_exec may end the password with a NUL byte; a client may have sent a trailing newline.
    raw = raw.rstrip(b"\0").rstrip(b"\r\n")
    if not raw:
        raise Refused("malformed", "empty password")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise Refused("malformed", "token is not ASCII") from None


def parse_token(token):
    from urllib.parse import parse_qsl

    m = TOKEN_RE.match(token)
    if not m:
        raise Refused("malformed", "not HOST:PORT/?QUERY")
    try:
        pairs = parse_qsl(m["query"], keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise Refused("malformed", "query does not parse") from None
    params = {}
    for k, v in pairs:
        if k in params:
            raise Refused("malformed", f"parameter {k} repeated")
        params[k] = v
    missing = [k for k in REQUIRED if k not in params]
    if missing:
        raise Refused("malformed", "missing " + ",".join(missing))
    unknown = sorted(set(params) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise Refused("malformed", "unexpected parameters " + ",".join(unknown[:5])[:200])
    if params["Action"] != "connect":
        raise Refused("malformed", "Action is not connect")
    if params["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
        raise Refused("malformed", "X-Amz-Algorithm is not AWS4-HMAC-SHA256")
    if params["X-Amz-SignedHeaders"] != "host":
        raise Refused("malformed", "X-Amz-SignedHeaders is not host")
    if not re.fullmatch(r"[0-9a-f]{64}", params["X-Amz-Signature"]):
        raise Refused("malformed", "X-Amz-Signature is not 64 hex digits")
    if not re.fullmatch(r"[0-9]{1,6}", params["X-Amz-Expires"]):
        raise Refused("malformed", "X-Amz-Expires is not an integer")
    expires = int(params["X-Amz-Expires"])
    if not 1 <= expires <= MAX_EXPIRES:
        raise Refused("malformed", f"X-Amz-Expires {expires} outside 1..{MAX_EXPIRES}")
    try:
        signed_at = datetime.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
    except ValueError:
        raise Refused("malformed", "X-Amz-Date is not YYYYMMDDTHHMMSSZ") from None
    scope = params["X-Amz-Credential"].split("/")
    if len(scope) != 5:
        raise Refused("malformed", "X-Amz-Credential is not AKID/DATE/REGION/SERVICE/aws4_request")
    port = int(m["port"])
    if not 1 <= port <= 65535:
        raise Refused("malformed", "port out of range")
    return {
        "host": m["host"],
        "port": port,
        "params": params,
        "expires": expires,
        "signed_at": signed_at,
        "scope": scope,
    }


def find_credentials(cfg, tok):
    akid, date, region, service, terminator = tok["scope"]
    creds = [c for c in cfg["credentials"] if c.get("access_key_id") == akid]
    if not creds:
        # The access key id is not a secret (it is in every token), but there is no need to log it.
        raise Refused("unknown-access-key", "no configured credentials for the token's access key id")
    if service != "rds-db" or terminator != "aws4_request":
        raise Refused("wrong-scope", f"credential scope service {service[:40]!r}, not rds-db")
    if date != tok["params"]["X-Amz-Date"][:8]:
        raise Refused("wrong-scope", "credential scope date differs from X-Amz-Date")
    if region != cfg["region"]:
        raise Refused("wrong-scope", f"region {region[:40]!r}, expected {cfg['region']!r}")
    return creds[0]


def recompute_signature(cred, tok):
    """The presigned URL botocore's SigV4QueryAuth makes for the token's own claims (host, port, user,
    instant, lifetime), exactly as RDS's generate_db_auth_token builds it."""
    from unittest import mock

    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials

    credentials = botocore.credentials.Credentials(
        cred["access_key_id"], cred["secret_access_key"], cred.get("session_token")
    )
    request = botocore.awsrequest.AWSRequest(
        method="GET",
        url=f"https://{tok['host']}:{tok['port']}/",
        data={"Action": "connect", "DBUser": tok["params"]["DBUser"]},
    )
    signer = botocore.auth.SigV4QueryAuth(credentials, "rds-db", tok["scope"][2], expires=tok["expires"])
    at = tok["signed_at"]
    with mock.patch.object(botocore.auth, "get_current_datetime", side_effect=lambda *a, **k: at):
        signer.add_auth(request)
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(request.url).query, keep_blank_values=True))


def verify(cfg, token, pam_user, now):
    tok = parse_token(token)
    cred = find_credentials(cfg, tok)
    params = tok["params"]
    want_session = cred.get("session_token")
    if params.get("X-Amz-Security-Token") != want_session:
        # Covered by the signature too; named separately so a test can tell why.
        raise Refused("wrong-session-token", "X-Amz-Security-Token absent or not the configured one")
    expected = recompute_signature(cred, tok)
    if not hmac.compare_digest(expected.pop("X-Amz-Signature", ""), params["X-Amz-Signature"]):
        raise Refused("bad-signature", "signature does not match the configured secret key")
    rest = {k: v for k, v in params.items() if k != "X-Amz-Signature"}
    if rest != expected:
        raise Refused("malformed", "parameters differ from the ones botocore signs")
    signed_at = tok["signed_at"].replace(tzinfo=datetime.timezone.utc).timestamp()
    if signed_at > now + MAX_FUTURE_SKEW:
        raise Refused("not-yet-valid", f"signed {int(signed_at - now)}s in the future")
    if now > signed_at + tok["expires"]:
        raise Refused("expired", f"expired {int(now - signed_at - tok['expires'])}s ago")
    if not pam_user:
        raise Refused("config-error", "PAM_USER is not set")
    if params["DBUser"] != pam_user:
        raise Refused("wrong-user", f"token for user {params['DBUser'][:64]!r}, login as {pam_user[:64]!r}")
    want_host, want_port = str(cfg["host"]), int(cfg["port"])
    if tok["host"].lower() != want_host.lower() or tok["port"] != want_port:
        raise Refused("wrong-host", f"token for {tok['host'][:100]}:{tok['port']}, server is {want_host}:{want_port}")


def log(path, entry):
    if not path:
        return
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def main(argv):
    entry = {
        "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "service": os.environ.get("PAM_SERVICE", ""),
        "user": os.environ.get("PAM_USER", ""),
        "rhost": os.environ.get("PAM_RHOST", ""),
    }
    log_path = argv[-1] if len(argv) in (2, 4) else None
    try:
        site_packages, config_path, log_path = parse_args(argv)
        if site_packages:
            sys.path.insert(0, site_packages)
        try:
            cfg = load_config(config_path)
        except Refused:
            raise
        except Exception as e:
            raise Refused("config-error", f"cannot read config: {type(e).__name__}") from None
        verify(cfg, read_token(), entry["user"], time.time())
        entry.update(result="accepted", reason="ok", detail="")
        code = 0
    except Refused as r:
        entry.update(result="refused", reason=r.reason, detail=r.detail)
        code = 1
    except Exception as e:
        # The message of an arbitrary exception could quote the token: log its type only.
        entry.update(result="refused", reason="internal-error", detail=type(e).__name__)
        code = 1
    try:
        log(log_path, entry)
    except OSError:
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
