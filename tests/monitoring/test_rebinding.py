"""DNS rebinding in a real browser: headless Chromium (Debian's package) with
`--host-resolver-rules` mapping `evil.test` to 127.0.0.1, as a rebinding attack leaves it.
- A page served from http://evil.test:PAGE `fetch()`es sidekey's routes (same name, other
  port; and via localhost with a body): nothing reaches the upstream.
- The rebinding end state, a page whose origin is http://evil.test:SIDEKEY itself (a
  top-level load of a route, as the attacker's page reloads after the DNS switch): 403
  host_not_allowed, the page holds no upstream data; the admin listener's /credential likewise.
- Control: the same route loaded as http://127.0.0.1:SIDEKEY (a local caller) is served.

Run by tests/monitoring/run.sh; argv: sidekey binary, chromium binary.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import free_port, wait

SEEN = []
UPSTREAM_DATA = "UPSTREAM_DATA_7f3a"


class Upstream(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        SEEN.append(self.path)
        body = json.dumps({"items": [UPSTREAM_DATA]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET


def serve(handler):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def main():
    sidekey, chromium = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as work:
        up = serve(Upstream)
        admin, listener = free_port(), free_port()
        with open(os.path.join(work, "api-key"), "w") as f:
            f.write("sk_rebinding_0001")
        config = os.path.join(work, "sidekey.toml")
        with open(config, "w") as f:
            f.write(f"""
[listener]
address = "127.0.0.1:{listener}"
[admin]
address = "127.0.0.1:{admin}"
[upstream]
url = "http://127.0.0.1:{up.server_address[1]}"
allow_plaintext_upstream = true
[credential]
file = "api-key"
[service]
name = "rebinding-test"
allow = ["read", "write"]
[permissions]
"read" = ["GET /v1/items"]
"write" = ["POST /v1/items"]
""")
        attack = f"""<!doctype html><html><body><pre id="out">running</pre><script>
const out = document.getElementById('out');
const log = (s) => {{ out.textContent += '\\n' + s; }};
(async () => {{
  for (const [url, init] of [
    ['http://evil.test:{listener}/v1/items', {{}}],
    ['http://evil.test:{listener}/v1/items', {{mode: 'no-cors'}}],
    ['http://localhost:{listener}/v1/items', {{method: 'POST', body: '{{}}', mode: 'no-cors'}}],
    ['http://evil.test:{admin}/credential', {{mode: 'no-cors'}}],
  ]) {{
    try {{ const r = await fetch(url, init); log(url + ' ' + r.type + ' ' + r.status + ' ' + (await r.text())); }}
    catch (e) {{ log(url + ' failed ' + e); }}
  }}
  log('done');
}})();
</script></body></html>"""

        class Page(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = attack.encode()
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        page = serve(Page)
        proc = subprocess.Popen([sidekey, "run", "--config", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def browse(url, extra=()):
            return subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--host-resolver-rules=MAP evil.test 127.0.0.1", f"--user-data-dir={work}/chrome",
                 *extra, "--dump-dom", url],
                capture_output=True, text=True, timeout=120,
            ).stdout

        try:
            wait("sidekey to serve", lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=2), limit=20)
            dom = browse(f"http://evil.test:{page.server_address[1]}/attack.html", ["--virtual-time-budget=5000"])
            assert "done" in dom, dom[:3000]
            assert UPSTREAM_DATA not in dom and "sk_rebinding" not in dom, dom[:3000]
            assert SEEN == [], f"a page's request reached the upstream: {SEEN}"
            print("a page on a rebinding name fetching sidekey's routes and admin: nothing reached the upstream, nothing read: ok")

            dom = browse(f"http://evil.test:{listener}/v1/items")
            assert "host_not_allowed" in dom and UPSTREAM_DATA not in dom, dom[:3000]
            dom = browse(f"http://evil.test:{admin}/credential")
            assert "host_not_allowed" in dom and "fingerprint" not in dom, dom[:3000]
            assert SEEN == [], SEEN
            print("the rebinding end state (origin evil.test on sidekey's own ports): 403 host_not_allowed, no data: ok")

            dom = browse(f"http://127.0.0.1:{listener}/v1/items")
            assert UPSTREAM_DATA in dom, dom[:3000]
            assert SEEN == ["/v1/items"], SEEN
            print("control: the same route loaded by a local caller (127.0.0.1) is served: ok")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            up.shutdown()
            page.shutdown()


if __name__ == "__main__":
    main()
