"""Tokens sidekey mints, against real servers and official clients, offline:
- a real OAuth2 authorization server (Authlib's, on Flask, over TLS) with the client
  credentials grant for a client_secret_basic and a client_secret_post client, tokens living
  3 s, so refreshes happen under load: every request succeeds and token requests stay
  single-flight; a client with a wrong secret gets invalid_client, shown in the log, and its
  requests fail closed;
- Google: a token endpoint that verifies the JWT-bearer assertion with the service account's
  public key (PyJWT), and the official `google-cloud-storage` client (anonymous credentials,
  `api_endpoint` at sidekey) listing objects on a mock that takes only the minted token;
- GitHub: a mock that verifies the App JWT (PyJWT: RS256, iss, iat/exp window) and issues
  installation tokens; PyGithub through sidekey holding no token.
Nothing of a secret, an assertion or a token appears in sidekey's log.

Run by tests/clients/run.sh; needs the sidekey binary as argv[1].
"""

import datetime
import json
import os
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse

from test_sdks import Mock, mint, run_until

SECRETS = {"basic": "cs_basic_real_0001", "post": "cs_post_real_0002"}
TTL = 3
ISSUED = {}  # token -> expiry (unix seconds)
TOKEN_REQUESTS = {"basic": 0, "post": 0, "bad": 0}
LOCK = threading.Lock()


def oauth_server(pki):
    """Authlib's authorization server (client credentials) on Flask, over TLS."""
    from authlib.integrations.flask_oauth2 import AuthorizationServer
    from authlib.oauth2.rfc6749 import ClientMixin, grants
    from flask import Flask
    from werkzeug.serving import make_server

    class Client(ClientMixin):
        def __init__(self, cid, secret, method):
            self.cid, self.secret, self.method = cid, secret, method

        def get_client_id(self):
            return self.cid

        def get_default_redirect_uri(self):
            return None

        def get_allowed_scope(self, scope):
            return scope

        def check_redirect_uri(self, uri):
            return False

        def check_client_secret(self, secret):
            return secret == self.secret

        def check_endpoint_auth_method(self, method, endpoint):
            return method == self.method

        def check_response_type(self, t):
            return False

        def check_grant_type(self, g):
            return g == "client_credentials"

    class ClientCredentials(grants.ClientCredentialsGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    clients = {
        "basic": Client("basic", SECRETS["basic"], "client_secret_basic"),
        "post": Client("post", SECRETS["post"], "client_secret_post"),
        "bad": Client("bad", "the-right-one", "client_secret_basic"),
    }

    def save_token(token, request):
        with LOCK:
            ISSUED[token["access_token"]] = time.time() + token["expires_in"]

    app = Flask("idp")
    app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"client_credentials": TTL}
    server = AuthorizationServer(app, query_client=clients.get, save_token=save_token)
    server.register_grant(ClientCredentials)

    @app.route("/oauth/token", methods=["POST"])
    def token():
        from flask import request
        auth = request.authorization
        cid = auth.username if auth else request.form.get("client_id")
        with LOCK:
            if cid in TOKEN_REQUESTS:
                TOKEN_REQUESTS[cid] += 1
        return server.create_token_response()

    import logging
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["leaf.pem"], pki["leaf.key"])
    srv = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ctx)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"https://localhost:{srv.server_port}"


class TokenMock(Mock):
    """The APIs (taking only live minted tokens) and the Google and GitHub token endpoints."""

    def __init__(self, kind, pki, public_pem=None):
        self.public_pem = public_pem
        self.issued = []
        super().__init__(kind, pki)

    def handle(self, req):
        import jwt
        length = int(req.headers.get("content-length") or 0)
        body = req.rfile.read(length) if length else b""
        self.seen.append((req.command, req.path, dict(req.headers.items())))
        path = req.path.split("?")[0]
        auth = req.headers.get("authorization") or ""
        bearer = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        if self.kind == "google-token" and path == "/token":
            form = dict(urllib.parse.parse_qsl(body.decode()))
            try:
                claims = jwt.decode(form.get("assertion", ""), self.public_pem, algorithms=["RS256"],
                                    audience=f"{self.origin}/token")
                assert claims["iss"] == "sa@proj.iam.gserviceaccount.com", claims
                assert claims["scope"] == "https://www.googleapis.com/auth/devstorage.read_only", claims
                assert claims["exp"] - claims["iat"] <= 3600, claims
                assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer", form
            except Exception as e:  # noqa: BLE001 - any failure is an invalid grant
                return self.json(req, {"error": "invalid_grant", "error_description": type(e).__name__}, status=400)
            token = f"ya29.mock-{len(self.issued) + 1}"
            self.issued.append(token)
            return self.json(req, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})
        if self.kind == "github" and path == "/app/installations/7890/access_tokens":
            try:
                claims = jwt.decode(bearer or "", self.public_pem, algorithms=["RS256"])
                assert claims["iss"] == "123456" and claims["exp"] - claims["iat"] <= 600, claims
                assert claims["iat"] <= time.time() - 30, claims
            except Exception:  # noqa: BLE001
                return self.json(req, {"message": "A JSON web token could not be decoded"}, status=401)
            token = f"ghs_mock{len(self.issued) + 1:04d}"
            self.issued.append(token)
            expires = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            return self.json(req, {"token": token, "expires_at": expires}, status=201)
        if self.kind == "github" and path == "/repos/o/r/issues":
            if bearer not in self.issued:
                return self.json(req, {"message": "Bad credentials"}, status=401)
            return self.json(req, [{"number": 7, "title": "minted", "state": "open",
                                    "url": f"{self.origin}/repos/o/r/issues/7"}])
        if self.kind == "gcs" and path == "/storage/v1/b/bkt/o":
            if bearer not in self.public_pem:  # here: the Google token mock's issued list
                return self.json(req, {"error": {"code": 401, "message": "Invalid Credentials"}}, status=401)
            return self.json(req, {"kind": "storage#objects", "items": [{"kind": "storage#object", "name": "a.txt", "bucket": "bkt"}]})
        if self.kind == "graph" and path == "/v1/me":
            with LOCK:
                live = bearer is not None and ISSUED.get(bearer, 0) > time.time()
            if not live:
                return self.json(req, {"error": "invalid_token"}, status=401)
            return self.json(req, {"id": "me"})
        return self.json(req, {"error": "mock has no such route"}, status=404)


def rsa_pem():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def start(binary, path, log_path):
    proc, event, log = run_until(binary, path, log_path, "sidekey bound")
    return proc, event["listener"], event.get("admin"), log


def main():
    binary = sys.argv[1]
    import github
    import requests
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    with tempfile.TemporaryDirectory() as work:
        pki = mint(work)
        idp, idp_url = oauth_server(pki)
        gh_private, gh_public = rsa_pem()
        sa_private, sa_public = rsa_pem()
        google_token = TokenMock("google-token", pki, sa_public)
        gcs = TokenMock("gcs", pki, google_token.issued)  # takes the tokens google_token issued
        gh = TokenMock("github", pki, gh_public)
        graph = TokenMock("graph", pki)
        for name, text in {"basic.secret": SECRETS["basic"], "post.secret": SECRETS["post"],
                           "bad.secret": "a-wrong-secret", "gh.pem": gh_private}.items():
            with open(os.path.join(work, name), "w") as f:
                f.write(text)
        with open(os.path.join(work, "sa.json"), "w") as f:
            json.dump({"type": "service_account", "client_email": "sa@proj.iam.gserviceaccount.com",
                       "private_key": sa_private, "token_uri": f"{google_token.origin}/token"}, f)
        oauth = lambda cid, auth: (  # noqa: E731
            f'scheme = "oauth2_client_credentials", token_url = "{idp_url}/oauth/token", token_ca_file = "ca.pem", '
            f'client_id = "{cid}", client_secret_file = "{cid}.secret", client_auth = "{auth}", scope = "me.read"')
        config = f"""
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[reload]
interval = "1s"
debounce = "50ms"

[api.graph]
url = "{graph.origin}"
ca_file = "ca.pem"
path_prefix = "/graph"
credential = {{ {oauth("basic", "basic")} }}
[api.graph.permissions]
"me" = ["GET /v1/me"]

[api.graphpost]
url = "{graph.origin}"
ca_file = "ca.pem"
path_prefix = "/graphpost"
credential = {{ {oauth("post", "post")} }}
[api.graphpost.permissions]
"me" = ["GET /v1/me"]

[api.graphbad]
url = "{graph.origin}"
ca_file = "ca.pem"
path_prefix = "/graphbad"
credential = {{ {oauth("bad", "basic")} }}
[api.graphbad.permissions]
"me" = ["GET /v1/me"]

[api.gcs]
url = "{gcs.origin}"
ca_file = "ca.pem"
path_prefix = "/gcs"
credential = {{ scheme = "google_service_account", key_file = "sa.json", scope = "https://www.googleapis.com/auth/devstorage.read_only", token_ca_file = "ca.pem" }}
[api.gcs.permissions]
"objects:list" = ["GET /storage/v1/b/{{bucket}}/o"]

[api.github]
url = "{gh.origin}"
ca_file = "ca.pem"
path_prefix = "/github"
credential = {{ scheme = "github_app", app_id = "123456", installation_id = "7890", private_key_file = "gh.pem" }}
[api.github.permissions]
"issues:read" = ["GET /repos/{{o}}/{{r}}/issues"]

[service]
name = "token-clients"
allow = ["graph/me", "graphpost/me", "graphbad/me", "gcs/objects:list", "github/issues:read"]
"""
        path = os.path.join(work, "sidekey.toml")
        with open(path, "w") as f:
            f.write(config)
        proc, addr, _admin, log = start(binary, path, os.path.join(work, "sidekey.log"))
        try:
            base = f"http://{addr}"
            deadline = time.time() + 15
            while time.time() < deadline:
                if all(requests.get(f"{base}/{p}/v1/me", timeout=5).status_code == 200 for p in ("graph", "graphpost")):
                    break
                time.sleep(0.1)
            before = dict(TOKEN_REQUESTS)
            failures, done = [], []

            def loop(prefix):
                end = time.time() + 7
                while time.time() < end:
                    r = requests.get(f"{base}/{prefix}/v1/me", timeout=10)
                    done.append(1)
                    if r.status_code != 200:
                        failures.append((prefix, r.status_code, r.text[:200]))

            threads = [threading.Thread(target=loop, args=(p,)) for p in ("graph", "graphpost") for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not failures, failures[:5]
            for cid in ("basic", "post"):
                n = TOKEN_REQUESTS[cid] - before[cid]
                # 3 s tokens refreshed at 2.4 s over 7 s: about 3, one at a time.
                assert 2 <= n <= 5, (cid, n, TOKEN_REQUESTS)
            print(f"Authlib OAuth2 server, client_secret_basic and client_secret_post: {len(done)} requests across "
                  f"refreshes of 3 s tokens, none failed, token requests single-flight: ok")

            r = requests.get(f"{base}/graphbad/v1/me", timeout=10)
            assert r.status_code == 503 and r.json()["error"]["code"] == "credential_unavailable", r.text
            log.seek(0)
            assert "invalid_client" in log.read(), "the token endpoint's error is not in the log"
            print("a wrong client secret: invalid_client in the log, requests fail closed (503): ok")

            client = storage.Client(project="p", credentials=AnonymousCredentials(),
                                    client_options={"api_endpoint": f"{base}/gcs"})
            names = [b.name for b in client.list_blobs("bkt")]
            assert names == ["a.txt"], names
            assert google_token.issued, "no token minted"
            print("google-cloud-storage (anonymous, api_endpoint at sidekey) with a minted service-account token: ok")

            g = github.Github(base_url=f"{base}/github", retry=None, lazy=True)
            issues = [i.number for i in g.get_repo("o/r").get_issues(state="open")]
            assert issues == [7], issues
            print("PyGithub through sidekey with a GitHub App installation token: ok")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            idp.shutdown()
            log.seek(0)
            text = log.read()
            secrets = list(SECRETS.values()) + list(ISSUED) + google_token.issued + gh.issued
            secrets += [gh_private.splitlines()[1], sa_private.splitlines()[1]]
            for s in secrets:
                assert s not in text, "a secret or token appeared in sidekey's log"
    print("token clients: all passed")


if __name__ == "__main__":
    main()
