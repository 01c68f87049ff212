"""Real programs through sidekey's forward proxy (HTTPS_PROXY), unchanged: curl (HTTP/1.1
and HTTP/2), Python `requests`, `httpx` with HTTP/2, Node's fetch through undici's
EnvHttpProxyAgent, and the `openai` SDK with its default base URL, against a TLS mock of
api.openai.com on loopback (reached with `connect_to`: no DNS, no network). Then
`sidekey exec -- python3 script.py` end to end with an ephemeral CA and a placeholder key.

Run by tests/clients/run.sh; needs the sidekey binary as argv[1].
"""

import os
import shlex
import subprocess
import sys
import tempfile

from test_sdks import Mock, mint, run_until

KEY = "sk-openai-forward-0001"
JUNK = "caller-junk-not-a-key"
HOST = "api.openai.com"


def config(work, mock_port, forward):
    return f"""
[listener]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
{forward}

[api.openai]
url = "https://{HOST}"
connect_to = "127.0.0.1:{mock_port}"
ca_file = "ca.pem"
path_prefix = "/openai"
placeholder_env = "OPENAI_API_KEY"
credential = {{ file = "openai.key" }}
[api.openai.permissions]
"models:read" = ["GET /v1/models"]
"chat" = ["POST /v1/chat/completions"]
"files:read" = ["GET /v1/files"]

[service]
name = "forward-clients"
allow = ["openai/models:read", "openai/chat"]
"""


def start(binary, path, log_path):
    proc, event, log = run_until(binary, path, log_path, "forward proxy bound")
    return proc, event["forward_proxy"], log


def env_of(binary, path):
    out = subprocess.run([binary, "env", "--config", path], check=True, capture_output=True, text=True).stdout
    env = {}
    for line in out.splitlines():
        name, value = line.removeprefix("export ").split("=", 1)
        env[name] = shlex.split(value)[0]
    return env


def run(cmd, env, **kw):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, **kw)


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as work:
        pki = mint(work, names=(HOST, "localhost"))
        mock = Mock("openai", pki)
        port = mock.server.server_address[1]
        with open(os.path.join(work, "openai.key"), "w") as f:
            f.write(KEY)
        ca_dir = os.path.join(work, "ca")
        subprocess.run([binary, "ca", "init", "--dir", ca_dir, "--host", HOST], check=True, capture_output=True)
        forward = f'[forward_proxy]\naddress = "127.0.0.1:0"\nca_cert_file = "ca/ca.crt"\nca_key_file = "ca/ca.key"\n'
        path = os.path.join(work, "sidekey.toml")
        with open(path, "w") as f:
            f.write(config(work, port, forward))
        proc, addr, log = start(binary, path, os.path.join(work, "sidekey.log"))
        try:
            env = {**os.environ, **env_of(binary, path)}
            # `sidekey env` names the configured address (:0); the bound one is in the log.
            for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
                env[name] = f"http://{addr}"
            url = f"https://{HOST}/v1/models"

            for flag, version in (("--http1.1", "1.1"), ("--http2", "2")):
                r = run(["curl", "-sS", flag, "-w", "\\n%{http_version}", "-H", f"Authorization: Bearer {JUNK}", url], env)
                body, got = r.stdout.rsplit("\n", 1)
                assert r.returncode == 0 and "gpt-mock" in body, (r.stdout, r.stderr)
                assert got == version, (flag, got)
            print("curl over HTTP/1.1 and HTTP/2 inside the tunnel: ok")

            r = run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"https://{HOST}/v1/files"], env)
            assert r.stdout == "403", r
            r = run(["curl", "-sS", "https://example.test/"], env)
            assert r.returncode != 0 and "403" in r.stderr, r
            r = run(["curl", "-sS", "--noproxy", "", "https://127.0.0.1/"], env)
            assert r.returncode != 0 and "403" in r.stderr, r
            print("curl: denied path 403 inside the tunnel; other host and IP literal 403 on CONNECT: ok")

            # A refused POST with a body over HTTP/2: curl must read the 403 every time (a
            # reset of the unread body right after the answer made curl 7.88 report no
            # response in a quarter to most of the tries).
            upload = os.path.join(work, "upload.bin")
            with open(upload, "wb") as f:
                f.write(b"x" * (256 * 1024))
            codes = []
            for size in ("1k", "256k") * 10:
                data = f"@{upload}" if size == "256k" else "x" * 1024
                r = run(["curl", "-sS", "--http2", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                         "--data-binary", data, f"https://{HOST}/v1/files"], env)
                codes.append((r.returncode, r.stdout, r.stderr.strip()[:80]))
            assert all(c[:2] == (0, "403") for c in codes), codes
            print("curl over HTTP/2: a refused POST with a body (1 KiB and 256 KiB, 20 tries) reads its 403 every time: ok")

            script = (
                "import requests, httpx, sys\n"
                f"r = requests.get('{url}', headers={{'Authorization': 'Bearer {JUNK}'}}, timeout=10)\n"
                "assert r.status_code == 200 and 'gpt-mock' in r.text, r.text\n"
                "with httpx.Client(http2=True, timeout=10) as c:\n"
                f"    r = c.get('{url}')\n"
                "    assert r.status_code == 200 and r.http_version == 'HTTP/2', (r.status_code, r.http_version)\n"
                "print('ok')\n"
            )
            r = run([sys.executable, "-c", script], env)
            assert r.returncode == 0 and r.stdout.strip() == "ok", (r.stdout, r.stderr)
            print("requests and httpx (HTTP/2) through HTTPS_PROXY: ok")

            sdk = (
                "import openai\n"
                f"c = openai.OpenAI(api_key='{JUNK}', max_retries=0)\n"
                "assert [m.id for m in c.models.list()] == ['gpt-mock']\n"
                "r = c.chat.completions.create(model='gpt-mock', messages=[{'role': 'user', 'content': 'hi'}])\n"
                "assert r.choices[0].message.content == 'hello from mock'\n"
                "print('ok')\n"
            )
            r = run([sys.executable, "-c", sdk], env)
            assert r.returncode == 0 and r.stdout.strip() == "ok", (r.stdout, r.stderr)
            print("openai SDK with its default base URL: ok")

            # run.sh installs undici; run by hand without it, this part is skipped (and says so).
            node = os.environ.get("SIDEKEY_NODE_MODULES")
            if not node:
                print("Node: SIDEKEY_NODE_MODULES not set (run tests/clients/run.sh): skipped")
            else:
                js = (
                    "const { EnvHttpProxyAgent, setGlobalDispatcher } = require('undici');\n"
                    "setGlobalDispatcher(new EnvHttpProxyAgent());\n"
                    f"fetch('{url}').then(r => r.json()).then(j => {{ if (j.data[0].id !== 'gpt-mock') process.exit(1); console.log('ok'); }})"
                    ".catch(e => { console.error(e); process.exit(1); });\n"
                )
                r = run(["node", "-e", js], {**env, "NODE_PATH": node})
                assert r.returncode == 0 and r.stdout.strip() == "ok", (r.stdout, r.stderr)
                print("Node fetch through undici's EnvHttpProxyAgent: ok")

            for method, target, headers in mock.seen:
                got = {k.lower(): v for k, v in headers.items()}
                assert got.get("authorization") == f"Bearer {KEY}", (target, got)
                assert JUNK not in " ".join(got.values()), got
                assert "proxy-authorization" not in got, got
            assert all(p != "/v1/files" for _, p, _ in mock.seen), "a denied path reached the mock"
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.seek(0)
            text = log.read()
            with open(os.path.join(ca_dir, "ca.key")) as f:
                ca_key = f.read()
            body = "".join(l for l in ca_key.splitlines() if not l.startswith("-----"))
            assert KEY not in text and JUNK not in text, "a key appeared in sidekey's log"
            assert body[:40] not in text, "CA key material appeared in sidekey's log"

        # `sidekey exec`: an ephemeral CA, a placeholder key, the real key nowhere near.
        path = os.path.join(work, "exec.toml")
        with open(path, "w") as f:
            f.write(config(work, port, ""))
        before = len(mock.seen)
        script = os.path.join(work, "script.py")
        with open(script, "w") as f:
            f.write(
                "import os, urllib.parse, openai, requests\n"
                "proxy = urllib.parse.urlsplit(os.environ['HTTPS_PROXY'])\n"
                "token = proxy.password\n"
                "assert proxy.username == 'sidekey' and token and len(token) == 64, proxy\n"
                "assert os.environ['OPENAI_API_KEY'] == token\n"
                f"assert not any('{KEY}' in v for v in os.environ.values())\n"
                "c = openai.OpenAI(max_retries=0)\n"
                "assert [m.id for m in c.models.list()] == ['gpt-mock']\n"
                "# Another process that finds the port but holds no token: 407, nothing sent.\n"
                "bare = f'http://{proxy.hostname}:{proxy.port}'\n"
                "try:\n"
                "    requests.get('https://api.openai.com/v1/models', proxies={'https': bare}, timeout=10)\n"
                "    raise SystemExit('served without the session token')\n"
                "except requests.exceptions.ProxyError as e:\n"
                "    assert '407' in str(e), e\n"
                "wrong = f'http://sidekey:{\"0\" * 64}@{proxy.hostname}:{proxy.port}'\n"
                "try:\n"
                "    requests.get('https://api.openai.com/v1/models', proxies={'https': wrong}, timeout=10)\n"
                "    raise SystemExit('served with a wrong session token')\n"
                "except requests.exceptions.ProxyError as e:\n"
                "    assert '407' in str(e), e\n"
                "print('exec ok')\n"
            )
        r = run([binary, "exec", "--config", path, "--", sys.executable, script], os.environ.copy())
        assert r.returncode == 0 and "exec ok" in r.stdout, (r.returncode, r.stdout, r.stderr)
        last = {k.lower(): v for k, v in mock.seen[-1][2].items()}
        assert len(mock.seen) == before + 1 and last.get("authorization") == f"Bearer {KEY}", last
        r = run([binary, "exec", "--config", path, "--", sys.executable, "-c", "raise SystemExit(7)"], os.environ.copy())
        assert r.returncode == 7, r
        print("sidekey exec -- python3 script.py (ephemeral CA, session token as proxy credential and placeholder key, a process without it refused 407, exit status): ok")
    print("forward clients: all passed")


if __name__ == "__main__":
    main()
