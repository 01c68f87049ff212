"""AWS SigV4 through sidekey with the official `boto3` SDK holding placeholder keys, checked by
an independent signer: a TLS front on loopback verifies every request's signature with
botocore's own SigV4 implementation and the real secret (S3 rules for S3, the others' for
DynamoDB), checks the declared body hash against the body, records what it saw, and passes
the request on to `moto`'s server mode, which plays S3, DynamoDB and STS.

- S3 on an API's own listener (the SDK's endpoint_url): create bucket, put, get, list,
  a 50 MiB put streamed (sidekey's peak RSS stays far below the body) and a 50 MiB multipart
  upload, a presigned URL (its query signature removed, the request re-signed).
- DynamoDB under a path prefix with payload = "signed": create table, put, get; a body over
  max_signed_body gets 413 with nothing sent; a chunk-signed upload gets 400.
- A role: STS AssumeRoleWithWebIdentity (moto) mints temporary keys; requests are signed with
  them and carry the session token.
- A plain client with no declared hash: S3's UNSIGNED-PAYLOAD (streamed), and an S3 API with
  payload = "signed" (sidekey hashes the body).
- Rotation of the key pair (a kubelet-style symlink swap) under load: no failed request.
- `sidekey exec`: boto3 unchanged, path-style and virtual-hosted (`hosts` wildcard).
- sidekey's log, /metrics and /credential hold no secret, session token or signature.

Run by tests/clients/run.sh; needs the sidekey binary as argv[1].
"""

import hashlib
import hmac
import http.client
import io
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from test_sdks import mint, run_until

PAIRS = {"AKIDSIDEKEY0001": "real/secret+key/0001", "AKIDSIDEKEY0002": "real/secret+key/0002"}
SESSION = "real-session-token-0001"
PLACEHOLDER = "PLACEHOLDERKEY"
S3_HOST = "s3.eu-west-1.amazonaws.com"
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "expect"}
AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                  r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Verifier:
    """The TLS front: verifies, records, forwards to moto. Learns STS's temporary keys from
    the answers it passes back."""

    def __init__(self, pki, moto_port):
        self.moto_port = moto_port
        self.secrets = dict(PAIRS)
        self.tokens = {}  # key id -> session token it must come with
        self.seen = []  # (method, target, headers, verdict)
        self.signatures = []
        self.lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                front.handle(self)

            do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki["leaf.pem"], pki["leaf.key"])
        ctx.set_alpn_protocols(["http/1.1"])
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.origin = f"https://localhost:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def read_body(req):
        if req.headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(req.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while req.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += req.rfile.read(size)
                req.rfile.readline()
        return req.rfile.read(int(req.headers.get("content-length") or 0))

    def verify(self, req, body):
        """None if the request is signed right, else why not."""
        h = {k.lower(): v for k, v in req.headers.items()}
        m = AUTH.match(h.get("authorization", ""))
        if not m:
            return f"no SigV4 Authorization: {h.get('authorization')!r}"
        key_id, date, region, service, signed, signature = m.groups()
        secret = self.secrets.get(key_id)
        if secret is None:
            return f"unknown key id {key_id}"
        names = signed.split(";")
        need = {"host", "x-amz-date", "x-amz-content-sha256"}
        if key_id in self.tokens or "x-amz-security-token" in h:
            need.add("x-amz-security-token")
            if h.get("x-amz-security-token") != self.tokens.get(key_id, SESSION):
                return "wrong session token"
        unsigned = [n for n in h if n.startswith("x-amz-") and n not in names]
        if not need <= set(names) or unsigned:
            return f"signed headers {names}, unsigned x-amz-* {unsigned}"
        stamp = h["x-amz-date"]
        age = abs(time.time() - time.mktime(time.strptime(stamp, "%Y%m%dT%H%M%SZ")) + time.timezone)
        if age > 300 or stamp[:8] != date:
            return f"stale or mismatched date {stamp}"
        declared = h["x-amz-content-sha256"]
        if re.fullmatch(r"[0-9a-f]{64}", declared) and hashlib.sha256(body).hexdigest() != declared:
            return "the body does not match its declared hash"
        if declared.startswith("STREAMING-AWS4-") or (declared == "UNSIGNED-PAYLOAD" and service != "s3"):
            return f"payload {declared} for {service}"
        from botocore.auth import S3SigV4Auth, SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        aws_req = AWSRequest(method=req.command, url=f"https://{h['host']}{req.path}",
                             headers={n: h[n] for n in names}, data=body)
        aws_req.context["timestamp"] = stamp
        cls = S3SigV4Auth if service == "s3" else SigV4Auth
        auth = cls(Credentials(key_id, secret, h.get("x-amz-security-token")), service, region)
        want = auth.signature(auth.string_to_sign(aws_req, auth.canonical_request(aws_req)), aws_req)
        if not hmac.compare_digest(want, signature):
            return "SignatureDoesNotMatch"
        with self.lock:
            self.signatures.append(signature)
        return None

    def handle(self, req):
        body = self.read_body(req)
        h = {k.lower(): v for k, v in req.headers.items()}
        sts = b"Action=AssumeRoleWithWebIdentity" in body and "authorization" not in h
        verdict = None if sts else self.verify(req, body)
        with self.lock:
            self.seen.append((req.command, req.path, h, verdict))
        if verdict:
            data = f"<Error><Code>SignatureDoesNotMatch</Code><Message>{verdict}</Message></Error>".encode()
            req.send_response(403)
            req.send_header("content-type", "application/xml")
            req.send_header("content-length", str(len(data)))
            req.end_headers()
            req.wfile.write(data)
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.moto_port, timeout=60)
        headers = {k: v for k, v in h.items() if k not in HOP}
        headers["content-length"] = str(len(body))
        conn.request(req.command, req.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if sts and resp.status == 200:
            text = data.decode()
            tag = lambda t: re.search(f"<{t}>([^<]+)</{t}>", text).group(1)
            with self.lock:
                self.secrets[tag("AccessKeyId")] = tag("SecretAccessKey")
                self.tokens[tag("AccessKeyId")] = tag("SessionToken")
        req.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                req.send_header(k, v)
        req.send_header("content-length", str(len(data)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(data)
        conn.close()


def swap_keys(work, key_id, stamp):
    """A kubelet-style Secret update: a new timestamped directory, `..data` swapped to it."""
    aws = os.path.join(work, "aws")
    new = os.path.join(aws, f"..{stamp}")
    os.makedirs(new)
    for name, value in (("access-key-id", key_id), ("secret-access-key", PAIRS[key_id]), ("session-token", SESSION)):
        with open(os.path.join(new, name), "w") as f:
            f.write(value)
    tmp = os.path.join(aws, "..data_tmp")
    os.symlink(os.path.basename(new), tmp)
    os.rename(tmp, os.path.join(aws, "..data"))
    for name in ("access-key-id", "secret-access-key", "session-token"):
        link = os.path.join(aws, name)
        if not os.path.islink(link):
            os.symlink(os.path.join("..data", name), link)


def config(front, work):
    return f"""
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[reload]
interval = "1s"
debounce = "50ms"

[api.s3]
url = "{front.origin}"
ca_file = "ca.pem"
listen = "127.0.0.1:0"
[api.s3.credential]
scheme = "aws_sigv4"
region = "eu-west-1"
service = "s3"
access_key_id_file = "aws/access-key-id"
secret_access_key_file = "aws/secret-access-key"
session_token_file = "aws/session-token"
[api.s3.permissions]
"buckets:create" = ["PUT /{{bucket}}"]
"objects:list" = ["GET /{{bucket}}"]
"objects:read" = ["GET /{{bucket}}/{{*key}}", "HEAD /{{bucket}}/{{*key}}"]
"objects:write" = ["PUT /{{bucket}}/{{*key}}", "POST /{{bucket}}/{{*key}}"]

[api.s3signed]
url = "{front.origin}"
ca_file = "ca.pem"
path_prefix = "/s3signed"
credential = {{ scheme = "aws_sigv4", region = "eu-west-1", service = "s3", payload = "signed", access_key_id_file = "aws/access-key-id", secret_access_key_file = "aws/secret-access-key", session_token_file = "aws/session-token" }}
[api.s3signed.permissions]
"objects:write" = ["PUT /{{bucket}}/{{*key}}"]

[api.ddb]
url = "{front.origin}"
ca_file = "ca.pem"
path_prefix = "/ddb"
credential = {{ scheme = "aws_sigv4", region = "us-east-1", service = "dynamodb", access_key_id_file = "aws/access-key-id", secret_access_key_file = "aws/secret-access-key", session_token_file = "aws/session-token", max_signed_body = "64KiB" }}
[api.ddb.permissions]
"items" = ["POST /"]

[api.role]
url = "{front.origin}"
ca_file = "ca.pem"
path_prefix = "/role"
credential = {{ scheme = "aws_sigv4", region = "us-east-1", service = "dynamodb", role_arn = "arn:aws:iam::123456789012:role/app", web_identity_token_file = "token", sts_url = "{front.origin}/", sts_ca_file = "ca.pem" }}
[api.role.permissions]
"items" = ["POST /"]

[api.s3fwd]
url = "https://{S3_HOST}"
hosts = ["*.{S3_HOST}"]
connect_to = "127.0.0.1:{front.server.server_address[1]}"
path_prefix = "/s3fwd"
ca_file = "ca.pem"
credential = {{ scheme = "aws_sigv4", region = "eu-west-1", service = "s3", access_key_id_file = "aws/access-key-id", secret_access_key_file = "aws/secret-access-key", session_token_file = "aws/session-token" }}
[api.s3fwd.permissions]
"objects:read" = ["GET /{{bucket}}/{{*key}}"]

[service]
name = "aws-clients"
allow = ["s3/buckets:create", "s3/objects:list", "s3/objects:read", "s3/objects:write", "ddb/items", "role/items", "s3fwd/objects:read", "s3signed/objects:write"]
"""


def api_listener(log, api):
    """The address an API's own listener bound (from sidekey's JSON log)."""
    import json

    deadline = time.time() + 20
    while time.time() < deadline:
        log.seek(0)
        for line in log:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == "api listener bound" and event.get("api") == api:
                return event["listener"]
        time.sleep(0.05)
    raise SystemExit(f"no listener for {api}")


def peak_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main():
    binary = sys.argv[1]
    import boto3
    import requests
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config
    from moto.server import ThreadedMotoServer

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    with tempfile.TemporaryDirectory() as work:
        pki = mint(work, names=("localhost", S3_HOST, f"*.{S3_HOST}"))
        front = Verifier(pki, moto_port)
        os.makedirs(os.path.join(work, "aws"))
        swap_keys(work, "AKIDSIDEKEY0001", "2026_12_07_01")
        with open(os.path.join(work, "token"), "w") as f:
            f.write("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YXBwIn0.c2ln")
        path = os.path.join(work, "sidekey.toml")
        with open(path, "w") as f:
            f.write(config(front, work))
        log_path = os.path.join(work, "sidekey.log")
        proc, event, log = run_until(binary, path, log_path, "sidekey bound")
        metrics = ""
        try:
            # The front itself refuses a forged signature (the check can fail).
            forged = "AWS4-HMAC-SHA256 Credential=AKIDSIDEKEY0001/20261207/eu-west-1/s3/aws4_request, " \
                     "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" + "0" * 64
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            r = requests.get(f"{front.origin}/sidekey-bucket", verify=pki["ca.pem"], timeout=10, headers={
                "authorization": forged.replace("20261207", stamp[:8]), "x-amz-date": stamp,
                "x-amz-content-sha256": hashlib.sha256(b"").hexdigest()})
            assert r.status_code == 403 and "SignatureDoesNotMatch" in r.text, (r.status_code, r.text)
            front.seen.clear()
            s3_addr = api_listener(log, "s3")
            base = f"http://{event['listener']}"
            placeholder = dict(aws_access_key_id=PLACEHOLDER, aws_secret_access_key="placeholder-secret")
            s3 = boto3.client("s3", endpoint_url=f"http://{s3_addr}", region_name="eu-west-1",
                              config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}), **placeholder)
            s3.create_bucket(Bucket="sidekey-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
            s3.put_object(Bucket="sidekey-bucket", Key="dir/hello world+@.txt", Body=b"hello sigv4")
            assert s3.get_object(Bucket="sidekey-bucket", Key="dir/hello world+@.txt")["Body"].read() == b"hello sigv4"
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="sidekey-bucket", Prefix="dir/")["Contents"]]
            assert keys == ["dir/hello world+@.txt"], keys
            print("boto3 S3 (endpoint_url at sidekey's own listener): create, put, get, list, every signature verified by botocore: ok")

            big = os.urandom(50 * 1024 * 1024)
            digest = hashlib.md5(big).hexdigest()
            before = peak_rss_kb(proc.pid)
            s3.put_object(Bucket="sidekey-bucket", Key="big-single", Body=big)
            after = peak_rss_kb(proc.pid)
            assert after - before < 30 * 1024, f"sidekey's peak RSS grew {after - before} kB for a 50 MiB body"
            s3.upload_fileobj(io.BytesIO(big), "sidekey-bucket", "big-multipart",
                              Config=TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4))
            for key in ("big-single", "big-multipart"):
                got = s3.get_object(Bucket="sidekey-bucket", Key=key)["Body"].read()
                assert hashlib.md5(got).hexdigest() == digest, key
            print(f"boto3 S3 50 MiB put and 50 MiB multipart upload: streamed (peak RSS +{after - before} kB), read back equal: ok")

            v4 = boto3.client("s3", endpoint_url=f"http://{s3_addr}", region_name="eu-west-1",
                              config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"), **placeholder)
            for client in (s3, v4):
                url = client.generate_presigned_url("get_object", Params={"Bucket": "sidekey-bucket", "Key": "dir/hello world+@.txt"}, ExpiresIn=60)
                r = requests.get(url, timeout=10)
                assert r.status_code == 200 and r.content == b"hello sigv4", (r.status_code, r.text)
            print("presigned URLs (SigV2 and SigV4 query forms) with placeholder keys: their signature removed, the request re-signed: ok")

            # A plain client (no AWS SDK, no declared hash): S3 gets UNSIGNED-PAYLOAD and the
            # body streams; with payload = "signed" sidekey hashes the body. Both verified.
            r = requests.put(f"http://{s3_addr}/sidekey-bucket/plain-unsigned", data=b"plain body one", timeout=10)
            assert r.status_code == 200, (r.status_code, r.text)
            r = requests.put(f"{base}/s3signed/sidekey-bucket/plain-signed", data=b"plain body two", timeout=10)
            assert r.status_code == 200, (r.status_code, r.text)
            declared = {p.split("?")[0]: h["x-amz-content-sha256"] for m, p, h, v in front.seen if m == "PUT" and "plain-" in p}
            assert declared == {"/sidekey-bucket/plain-unsigned": "UNSIGNED-PAYLOAD",
                                "/sidekey-bucket/plain-signed": hashlib.sha256(b"plain body two").hexdigest()}, declared
            for key, want in (("plain-unsigned", b"plain body one"), ("plain-signed", b"plain body two")):
                assert s3.get_object(Bucket="sidekey-bucket", Key=key)["Body"].read() == want, key
            print("S3 without a declared hash: UNSIGNED-PAYLOAD streamed, and with payload = \"signed\" the body's hash, both verified: ok")

            ddb = boto3.client("dynamodb", endpoint_url=f"{base}/ddb", region_name="us-east-1",
                               config=Config(retries={"max_attempts": 1}), **placeholder)
            ddb.create_table(TableName="t", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                             AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                             BillingMode="PAY_PER_REQUEST")
            ddb.put_item(TableName="t", Item={"id": {"S": "1"}, "v": {"S": "x"}})
            assert ddb.get_item(TableName="t", Key={"id": {"S": "1"}})["Item"]["v"]["S"] == "x"
            print("boto3 DynamoDB (endpoint under a path prefix, signed payload): create, put, get: ok")

            before = len(front.seen)
            r = requests.post(f"{base}/ddb/", data=b"x" * (100 * 1024), timeout=10,
                              headers={"x-amz-target": "DynamoDB_20120810.PutItem", "content-type": "application/x-amz-json-1.0"})
            assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large_to_sign", r.text
            r = requests.put(f"http://{s3_addr}/sidekey-bucket/chunked", data=b"x" * 10, timeout=10,
                             headers={"x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"})
            assert r.status_code == 400 and r.json()["error"]["code"] == "aws_chunk_signatures_unsupported", r.text
            assert len(front.seen) == before
            print("over max_signed_body: 413; a chunk-signed upload: 400; nothing sent: ok")

            role = boto3.client("dynamodb", endpoint_url=f"{base}/role", region_name="us-east-1",
                                config=Config(retries={"max_attempts": 1}), **placeholder)
            assert "t" in role.list_tables()["TableNames"]
            signed_by = [AUTH.match(h["authorization"]).group(1) for m, p, h, v in front.seen if "authorization" in h]
            assert signed_by[-1] in front.tokens, (signed_by[-1], front.tokens.keys())
            print("a role via STS AssumeRoleWithWebIdentity (moto): temporary keys and session token, verified: ok")

            # Rotation under load: a kubelet-style swap to the second pair and back, while
            # requests run; AWS accepts both pairs while both are active.
            failures, done = [], threading.Event()

            def load():
                while not done.is_set():
                    try:
                        s3.head_object(Bucket="sidekey-bucket", Key="dir/hello world+@.txt")
                    except Exception as e:  # noqa: BLE001 - any failure fails the test
                        failures.append(repr(e))
            workers = [threading.Thread(target=load) for _ in range(3)]
            for w in workers:
                w.start()
            for i, key_id in enumerate(["AKIDSIDEKEY0002", "AKIDSIDEKEY0001", "AKIDSIDEKEY0002"]):
                time.sleep(0.7)
                swap_keys(work, key_id, f"2026_12_07_1{i}")
            deadline = time.time() + 10
            while time.time() < deadline:
                recent = [AUTH.match(h["authorization"]).group(1) for m, p, h, v in front.seen[-5:] if "authorization" in h]
                if recent and all(k == "AKIDSIDEKEY0002" for k in recent):
                    break
                time.sleep(0.1)
            done.set()
            for w in workers:
                w.join()
            assert not failures, failures[:3]
            assert recent and all(k == "AKIDSIDEKEY0002" for k in recent), recent
            print("key pair rotated three times under load (symlink swap): no failed request, the new pair in use: ok")

            # `sidekey exec`: boto3 unchanged, behind the forward proxy, finds placeholder keys
            # (and no session token or profile of the parent's) and reaches the real S3 host.
            script = os.path.join(work, "exec_s3.py")
            with open(script, "w") as f:
                f.write(
                    "import os, boto3\n"
                    "from botocore.config import Config\n"
                    "assert 'AWS_SESSION_TOKEN' not in os.environ and 'AWS_PROFILE' not in os.environ\n"
                    "assert os.environ['AWS_ACCESS_KEY_ID'] != 'AKIDSIDEKEY0001'\n"
                    "for style in ('path', 'virtual'):\n"
                    "    s3 = boto3.client('s3', region_name='eu-west-1', config=Config(s3={'addressing_style': style}))\n"
                    "    body = s3.get_object(Bucket='sidekey-bucket', Key='dir/hello world+@.txt')['Body'].read()\n"
                    "    assert body == b'hello sigv4', (style, body)\n"
                    "print('exec ok')\n")
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(AWS_SESSION_TOKEN="parent-session-token", AWS_PROFILE="parent-profile")
            before = len(front.seen)
            r = subprocess.run([binary, "exec", "--config", path, "--", sys.executable, script],
                               capture_output=True, text=True, timeout=60, env=env)
            assert r.returncode == 0 and "exec ok" in r.stdout, (r.returncode, r.stdout, r.stderr)
            hosts = {h["host"] for m, p, h, v in front.seen[before:] if "hello" in p}
            assert hosts == {S3_HOST, f"sidekey-bucket.{S3_HOST}"}, hosts
            print("sidekey exec: boto3 unchanged with placeholder keys, its AWS session token and profile removed; "
                  "path-style and virtual-hosted (a `hosts` wildcard) requests each signed for their own host: ok")

            bad = [(m, p, v) for m, p, h, v in front.seen if v]
            assert not bad, bad[:3]
            for m, p, h, v in front.seen:
                text = p + " " + " ".join(h.values())
                assert PLACEHOLDER not in text and "placeholder-secret" not in text, (p, h)
                for param in ("x-amz-signature", "x-amz-credential", "awsaccesskeyid", "signature="):
                    assert param not in p.lower(), p
            print(f"{len(front.seen)} requests at the front, every one signed by sidekey, no placeholder or caller signature: ok")
            metrics = requests.get(f"http://{event['admin']}/metrics", timeout=10).text
            metrics += requests.get(f"http://{event['admin']}/credential", timeout=10).text
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.seek(0)
            text = log.read() + metrics
            moto.stop()
        secrets = list(PAIRS.values()) + [SESSION] + list(front.tokens.values()) + \
            [s for k, s in front.secrets.items() if k not in PAIRS]
        for secret in secrets:
            assert secret not in text and urllib.parse.quote(secret, safe="") not in text, "a secret appeared in sidekey's log or metrics"
        assert not any(sig in text for sig in front.signatures), "a signature appeared in sidekey's log or metrics"
        assert "sidekey_requests_total" in metrics and "fingerprint" in metrics, metrics[:200]
        print("sidekey's log, /metrics and /credential: no secret key, session token or signature: ok")


if __name__ == "__main__":
    main()
