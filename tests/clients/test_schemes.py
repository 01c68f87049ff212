"""Official SDKs for APIs that take no single static header, each holding only a placeholder:
`twilio` (HTTP Basic) unchanged through `sidekey exec` (the forward proxy, an ephemeral CA),
`python-telegram-bot` (the token in the path) with its `base_url` pointed at sidekey,
`datadog-api-client` (two headers) with its host pointed at sidekey, and `requests` for a
query-parameter key. Every TLS mock records what it received: each must have seen only its own
secrets, in their place, and none of the placeholders; sidekey's log holds no secret.

Run by tests/clients/run.sh; needs the sidekey binary as argv[1].
"""

import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import urllib.parse

from test_sdks import Mock, mint, run_until

SECRETS = {
    "twilio": "tw_auth_token_real_0001",
    "telegram": "987654:tg-real-token_0002",
    "dd-api": "dd_api_real_0003",
    "dd-app": "dd_app_real_0004",
    "maps": "AIza+maps/real&0005",
}
JUNK = "placeholder-not-a-key"
TWILIO_HOST = "api.twilio.com"


class SchemeMock(Mock):
    """Answers what each SDK expects of its API; records (method, target, headers)."""

    def handle(self, req):
        length = int(req.headers.get("content-length") or 0)
        if length:
            req.rfile.read(length)
        self.seen.append((req.command, req.path, dict(req.headers.items())))
        path = req.path.split("?")[0]
        if self.kind == "twilio" and path.endswith("/Messages.json"):
            return self.json(req, {"sid": "SM0001", "account_sid": "AC0123", "status": "queued", "body": "hi"}, status=201)
        if self.kind == "telegram" and path.endswith("/getMe"):
            return self.json(req, {"ok": True, "result": {"id": 1, "is_bot": True, "first_name": "Mock", "username": "mock_bot"}})
        if self.kind == "datadog" and path == "/api/v1/validate":
            return self.json(req, {"valid": True})
        if self.kind == "maps" and path == "/maps/api/geocode/json":
            return self.json(req, {"status": "OK", "results": []})
        return self.json(req, {"error": "mock has no such route"}, status=404)


def config(mocks):
    return f"""
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"

[api.twilio]
url = "https://{TWILIO_HOST}"
connect_to = "127.0.0.1:{mocks['twilio'].server.server_address[1]}"
ca_file = "ca.pem"
path_prefix = "/twilio"
credential = {{ scheme = "basic", username = "AC0123", password_file = "twilio.key" }}
[api.twilio.permissions]
"messages:send" = ["POST /2010-04-01/Accounts/{{sid}}/Messages.json"]

[api.telegram]
url = "{mocks['telegram'].origin}"
ca_file = "ca.pem"
path_prefix = "/telegram"
credential = {{ scheme = "path", template = ["/bot{{key}}", "/file/bot{{key}}"], file = "telegram.key" }}
[api.telegram.permissions]
"bot:read" = ["POST /getMe", "GET /getMe"]

[api.datadog]
url = "{mocks['datadog'].origin}"
ca_file = "ca.pem"
path_prefix = "/datadog"
[api.datadog.credential]
scheme = "headers"
headers = {{ "dd-api-key" = {{ file = "dd-api.key" }}, "dd-application-key" = {{ file = "dd-app.key" }} }}
[api.datadog.permissions]
"validate" = ["GET /api/v1/validate"]

[api.maps]
url = "{mocks['maps'].origin}"
ca_file = "ca.pem"
path_prefix = "/maps"
credential = {{ scheme = "query", param = "key", file = "maps.key" }}
[api.maps.permissions]
"geocode" = ["GET /maps/api/geocode/json"]

[service]
name = "schemes-clients"
allow = ["twilio/messages:send", "telegram/bot:read", "datadog/validate", "maps/geocode"]
"""


def start(binary, path, log_path):
    proc, event, log = run_until(binary, path, log_path, "sidekey bound")
    return proc, event["listener"], log


def headers_of(mock):
    assert mock.seen, f"{mock.kind}: no request arrived"
    return [(m, p, {k.lower(): v for k, v in h.items()}) for m, p, h in mock.seen]


def no_placeholder_or_foreign_secret(mock, own):
    for method, target, headers in headers_of(mock):
        everything = target + " " + " ".join(headers.values())
        assert JUNK not in everything, f"{mock.kind}: the placeholder went upstream: {target} {headers}"
        for name, secret in SECRETS.items():
            if name not in own:
                assert secret not in everything, f"{mock.kind} got {name}'s secret"


def main():
    binary = sys.argv[1]
    import datadog_api_client
    import requests
    import telegram
    from datadog_api_client.v1.api.authentication_api import AuthenticationApi

    with tempfile.TemporaryDirectory() as work:
        pki = mint(work, names=(TWILIO_HOST, "localhost"))
        mocks = {k: SchemeMock(k, pki) for k in ("twilio", "telegram", "datadog", "maps")}
        for name, secret in SECRETS.items():
            with open(os.path.join(work, f"{name}.key"), "w") as f:
                f.write(secret)
        path = os.path.join(work, "sidekey.toml")
        with open(path, "w") as f:
            f.write(config(mocks))
        proc, addr, log = start(binary, path, os.path.join(work, "sidekey.log"))
        try:
            base = f"http://{addr}"

            bot = telegram.Bot(token=f"123456:{JUNK}", base_url=f"{base}/telegram/bot")

            async def me():
                async with bot:
                    return await bot.get_me()

            user = asyncio.run(me())
            assert user.username == "mock_bot", user
            targets = [p for _, p, _ in headers_of(mocks["telegram"])]
            assert targets and all(p == f"/bot{SECRETS['telegram']}/getMe" for p in targets), targets
            print("python-telegram-bot (base_url at sidekey): the placeholder token dropped, the real one in the path: ok")

            conf = datadog_api_client.Configuration(host=f"{base}/datadog")
            conf.api_key["apiKeyAuth"] = JUNK
            conf.api_key["appKeyAuth"] = JUNK
            with datadog_api_client.ApiClient(conf) as client:
                assert AuthenticationApi(client).validate().valid is True
            for _, _, h in headers_of(mocks["datadog"]):
                assert h.get("dd-api-key") == SECRETS["dd-api"], h
                assert h.get("dd-application-key") == SECRETS["dd-app"], h
            print("datadog-api-client (host at sidekey): both headers from their own parts: ok")

            r = requests.get(f"{base}/maps/maps/api/geocode/json",
                             params={"address": "1600 Amphitheatre", "key": JUNK}, timeout=10)
            assert r.status_code == 200 and r.json()["status"] == "OK", r.text
            _, target, _ = headers_of(mocks["maps"])[-1]
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
            assert query == {"address": ["1600 Amphitheatre"], "key": [SECRETS["maps"]]}, target
            print("requests with a query key: the caller's `key` removed, the real one appended, encoded: ok")

            # Outside the allow-list: refused by sidekey, nothing sent.
            before = sum(len(m.seen) for m in mocks.values())
            r = requests.get(f"{base}/telegram/bot{JUNK}/deleteWebhook", timeout=10)
            assert r.status_code == 403, (r.status_code, r.text)
            assert sum(len(m.seen) for m in mocks.values()) == before
            print("denied path behind the placeholder template: 403, nothing sent: ok")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.seek(0)
            text = log.read()
            for secret in SECRETS.values():
                assert secret not in text and urllib.parse.quote(secret, safe="") not in text, "a secret appeared in sidekey's log"

        # twilio, unmodified, through `sidekey exec`: the forward proxy intercepts
        # api.twilio.com and sends Basic with the real token; the SDK holds a placeholder.
        script = os.path.join(work, "twilio_script.py")
        with open(script, "w") as f:
            f.write(
                "from twilio.rest import Client\n"
                f"c = Client('AC0123', '{JUNK}')\n"
                "m = c.messages.create(to='+15550001111', from_='+15550002222', body='hi')\n"
                "assert m.sid == 'SM0001', m.sid\n"
                "print('exec ok')\n"
            )
        r = subprocess.run([binary, "exec", "--config", path, "--", sys.executable, script],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "exec ok" in r.stdout, (r.returncode, r.stdout, r.stderr)
        want = "Basic " + base64.b64encode(f"AC0123:{SECRETS['twilio']}".encode()).decode()
        for method, target, h in headers_of(mocks["twilio"]):
            assert (method, target) == ("POST", "/2010-04-01/Accounts/AC0123/Messages.json"), target
            assert h.get("authorization") == want, h
        print("twilio SDK through sidekey exec (forward proxy): Basic with the real token: ok")

        no_placeholder_or_foreign_secret(mocks["twilio"], {"twilio"})
        no_placeholder_or_foreign_secret(mocks["telegram"], {"telegram"})
        no_placeholder_or_foreign_secret(mocks["datadog"], {"dd-api", "dd-app"})
        no_placeholder_or_foreign_secret(mocks["maps"], {"maps"})
    print("scheme clients: all passed")


if __name__ == "__main__":
    main()
