"""The admin status page in a real browser: headless Chromium (Debian's package) loads it
from a running sidekey and the rendered DOM shows readiness, the key's fingerprint and the
last refusal with the permission it needs; no script runs, no external asset is fetched.

Run by tests/monitoring/run.sh; argv: sidekey binary, chromium binary.
"""

import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

from common import free_port, wait, write_config


def main():
    sidekey, chromium = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as work:
        admin, listener = free_port(), free_port()
        config = write_config(work, "sk_status_browser_0001", "browser-test", listener, admin,
                              '"read" = ["GET /v1/items"]\n"write" = ["POST /v1/items"]')
        proc = subprocess.Popen([sidekey, "run", "--config", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait("sidekey to serve", lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=2), limit=20)
            req = urllib.request.Request(f"http://127.0.0.1:{listener}/v1/items?api_token=hidden", method="POST", data=b"{}")
            try:
                urllib.request.urlopen(req, timeout=5)
            except urllib.error.HTTPError as e:
                assert e.code == 403, e.code
            fp = subprocess.run([sidekey, "fingerprint", os.path.join(work, "api-key")], capture_output=True, text=True, check=True).stdout.strip()
            dom = subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 f"--user-data-dir={work}/chrome", "--dump-dom", f"http://127.0.0.1:{admin}/"],
                capture_output=True, text=True, timeout=120,
            ).stdout
            for want in ("Ready.", fp, "<code>/v1/items</code>", "<td>write</td>", "allow = [\"read\", \"write\"]"):
                assert want in dom, (want, dom[:3000])
            assert "hidden" not in dom and "sk_status_browser" not in dom, dom
            assert "<script" not in dom.lower() and "http://" not in dom.split("<body", 1)[1].replace(f"http://127.0.0.1:{admin}", ""), dom
            print("status page in headless Chromium: readiness, fingerprint, refusal, allow line; no secrets: ok")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
