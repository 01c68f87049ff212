"""Real clients through one sidekey: the official `openai` SDK (JSON and streaming), the
official `anthropic` SDK (x-api-key, on the API's own listener) and PyGithub paging through
`Link` headers, each against a TLS mock of its API on loopback. Every mock records what it
received; each must have seen only its own key.

Run by tests/clients/run.sh (which makes the virtualenv); needs the sidekey binary as argv[1].
"""

import datetime
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

GITHUB_CATALOGUE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "config", "catalogues", "github.toml")
KEYS = {"openai": "sk-openai-real-0001", "anthropic": "sk-ant-real-0002", "github": "ghp_real_0003"}
CALLER_JUNK = "caller-holds-no-key"


def mint(dirname, names=("localhost",)):
    """A CA and a leaf for `names` (and 127.0.0.1), written as PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clients test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {}
    for name, data in {
        "ca.pem": ca.public_bytes(serialization.Encoding.PEM),
        "leaf.pem": leaf.public_bytes(serialization.Encoding.PEM),
        "leaf.key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }.items():
        paths[name] = os.path.join(dirname, name)
        with open(paths[name], "wb") as f:
            f.write(data)
    return paths


class Mock:
    """An HTTPS mock of one API; records (method, path, headers) of every request."""

    def __init__(self, kind, pki):
        self.kind = kind
        self.seen = []
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                mock.handle(self)

            def do_POST(self):
                mock.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki["leaf.pem"], pki["leaf.key"])
        ctx.set_alpn_protocols(["http/1.1"])
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.origin = f"https://localhost:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, req):
        length = int(req.headers.get("content-length") or 0)
        body = json.loads(req.rfile.read(length) or b"{}") if length else {}
        self.seen.append((req.command, req.path, dict(req.headers.items())))
        route = (self.kind, req.command, req.path.split("?")[0])
        if route == ("openai", "GET", "/v1/models"):
            return self.json(req, {"object": "list", "data": [
                {"id": "gpt-mock", "object": "model", "created": 0, "owned_by": "sidekey"}]})
        if route == ("openai", "POST", "/v1/chat/completions"):
            if body.get("stream"):
                return self.sse(req)
            return self.json(req, {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-mock",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "hello from mock"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}})
        if route == ("anthropic", "POST", "/v1/messages"):
            return self.json(req, {
                "id": "msg_1", "type": "message", "role": "assistant", "model": body.get("model"),
                "content": [{"type": "text", "text": "hello from claude mock"}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 1, "output_tokens": 4}})
        # Page 1 at /repos/o/r/issues; its Link names /repositories/42/issues, as GitHub's does.
        if route[:2] == ("github", "GET") and route[2] in ("/repos/o/r/issues", "/repositories/42/issues"):
            page = int(dict(p.split("=", 1) for p in req.path.split("?", 1)[1].split("&")).get("page", "1")) if "?" in req.path else 1
            items = [{"number": page * 10 + i, "title": f"issue {page}-{i}", "state": "open",
                      "url": f"{self.origin}/repos/o/r/issues/{page * 10 + i}"} for i in range(2)]
            headers = {}
            if page < 3:
                headers["Link"] = (f'<{self.origin}/repositories/42/issues?state=open&page={page + 1}>; rel="next", '
                                   f'<{self.origin}/repositories/42/issues?state=open&page=3>; rel="last"')
            return self.json(req, items, headers)
        return self.json(req, {"error": "mock has no such route"}, status=404)

    def json(self, req, value, headers=None, status=200):
        data = json.dumps(value).encode()
        req.send_response(status)
        req.send_header("content-type", "application/json")
        req.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            req.send_header(k, v)
        req.end_headers()
        req.wfile.write(data)

    def sse(self, req):
        req.send_response(200)
        req.send_header("content-type", "text/event-stream")
        req.send_header("transfer-encoding", "chunked")
        req.end_headers()
        for i, word in enumerate(["hel", "lo ", "stream"]):
            chunk = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 0,
                     "model": "gpt-mock", "choices": [{"index": 0, "delta": {"content": word},
                                                        "finish_reason": None}]}
            self.chunk(req, f"data: {json.dumps(chunk)}\n\n")
            time.sleep(0.05)  # separate writes: the stream must arrive in pieces
        self.chunk(req, "data: [DONE]\n\n")
        req.wfile.write(b"0\r\n\r\n")
        req.wfile.flush()

    @staticmethod
    def chunk(req, text):
        data = text.encode()
        req.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        req.wfile.flush()


def run_until(binary, path, log_path, message):
    """Starts `sidekey run --config path` logging JSON to `log_path`; returns the process, the
    first log event whose message is `message`, and the log file."""
    log = open(log_path, "w+")
    proc = subprocess.Popen([binary, "run", "--config", path], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "RUST_LOG": "info"})
    deadline = time.time() + 20
    while time.time() < deadline:
        log.seek(0)
        for line in log:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == message:
                return proc, event, log
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    log.seek(0)
    raise SystemExit("sidekey did not start:\n" + log.read())


def start_sidekey(binary, work, mocks):
    for name, key in KEYS.items():
        with open(os.path.join(work, f"{name}.key"), "w") as f:
            f.write(key)
    config = f"""
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"

[api.openai]
url = "{mocks['openai'].origin}"
ca_file = "ca.pem"
path_prefix = "/openai"
credential = {{ file = "openai.key" }}
[api.openai.permissions]
"models:read" = ["GET /v1/models"]
"chat" = ["POST /v1/chat/completions"]

[api.anthropic]
url = "{mocks['anthropic'].origin}"
ca_file = "ca.pem"
listen = "127.0.0.1:0"
credential = {{ file = "anthropic.key", header = "x-api-key", prefix = "" }}
[api.anthropic.permissions]
"messages" = ["POST /v1/messages"]

[api.github]
url = "{mocks['github'].origin}"
ca_file = "ca.pem"
path_prefix = "/github"
credential = {{ file = "github.key", prefix = "token " }}
# The shipped catalogue generated from GitHub's OpenAPI description (config/catalogues/).
permissions_file = "{GITHUB_CATALOGUE}"

[service]
name = "clients-test"
allow = ["openai/models:read", "openai/chat", "anthropic/messages", "github/issues:read"]
"""
    path = os.path.join(work, "sidekey.toml")
    with open(path, "w") as f:
        f.write(config)
    log = open(os.path.join(work, "sidekey.log"), "w+")
    proc = subprocess.Popen([binary, "run", "--config", path], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "RUST_LOG": "info"})
    addrs = {}
    deadline = time.time() + 20
    while time.time() < deadline and ("proxy" not in addrs or "anthropic" not in addrs):
        log.seek(0)
        for line in log:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == "sidekey bound":
                addrs["proxy"] = event["listener"]
            if event.get("message") == "api listener bound":
                addrs[event["api"]] = event["listener"]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if "proxy" not in addrs or "anthropic" not in addrs:
        log.seek(0)
        raise SystemExit("sidekey did not start:\n" + log.read())
    return proc, addrs, log


def only_own_key(mock, header, value):
    assert mock.seen, f"{mock.kind}: no request arrived"
    for method, path, headers in mock.seen:
        got = {k.lower(): v for k, v in headers.items()}
        assert got.get(header) == value, f"{mock.kind} {method} {path}: {header}={got.get(header)!r}"
        everything = " ".join(got.values())
        assert CALLER_JUNK not in everything, f"{mock.kind}: the caller's credential leaked: {got}"
        for other, key in KEYS.items():
            if other != mock.kind:
                assert key not in everything, f"{mock.kind} got {other}'s key"


def main():
    binary = sys.argv[1]
    import anthropic
    import github
    import openai

    with tempfile.TemporaryDirectory() as work:
        pki = mint(work)
        mocks = {kind: Mock(kind, pki) for kind in KEYS}
        proc, addrs, log = start_sidekey(binary, work, mocks)
        try:
            base = f"http://{addrs['proxy']}"

            oa = openai.OpenAI(api_key=CALLER_JUNK, base_url=f"{base}/openai/v1", max_retries=0)
            models = [m.id for m in oa.models.list()]
            assert models == ["gpt-mock"], models
            reply = oa.chat.completions.create(model="gpt-mock", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == "hello from mock", reply
            pieces = [c.choices[0].delta.content for c in oa.chat.completions.create(
                model="gpt-mock", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices]
            assert "".join(p for p in pieces if p) == "hello stream", pieces
            print("openai SDK: models, chat, streaming chat: ok")

            an = anthropic.Anthropic(api_key=CALLER_JUNK, base_url=f"http://{addrs['anthropic']}", max_retries=0)
            msg = an.messages.create(model="claude-mock", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
            assert msg.content[0].text == "hello from claude mock", msg
            print("anthropic SDK: messages on the API's own listener: ok")

            gh = github.Github(base_url=f"{base}/github", auth=github.Auth.Token(CALLER_JUNK), retry=None, lazy=True)
            issues = list(gh.get_repo("o/r").get_issues(state="open"))
            assert [i.number for i in issues] == [10, 11, 20, 21, 30, 31], [i.number for i in issues]
            print("PyGithub: 3 pages through rewritten Link headers (/repositories/{id} pages allowed by the generated catalogue): ok")

            only_own_key(mocks["openai"], "authorization", f"Bearer {KEYS['openai']}")
            only_own_key(mocks["anthropic"], "x-api-key", KEYS["anthropic"])
            only_own_key(mocks["github"], "authorization", f"token {KEYS['github']}")
            pages = [p for m, p, h in mocks["github"].seen]
            assert len(pages) == 3 and pages[0].startswith("/repos/o/r/issues"), pages
            assert all(p.startswith("/repositories/42/issues") for p in pages[1:]), pages
            # A request outside the allow-list never reaches a mock.
            before = sum(len(m.seen) for m in mocks.values())
            try:
                oa.files.list()
                raise AssertionError("files.list was allowed")
            except openai.PermissionDeniedError as e:
                assert e.body["code"] == "route_not_allowed" or "route_not_allowed" in str(e.body), e.body
            assert sum(len(m.seen) for m in mocks.values()) == before
            print("denied call: 403 from sidekey, nothing sent: ok")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.seek(0)
            text = log.read()
            for key in KEYS.values():
                assert key not in text, "a key appeared in sidekey's log"
    print("clients: all passed")


if __name__ == "__main__":
    main()
