"""Helpers shared by the monitoring tests: free loopback ports, JSON over HTTP, waiting
for a condition, and a minimal sidekey config (no upstream is ever contacted)."""

import json
import os
import socket
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def wait(what, cond, limit=60):
    """Polls `cond` until it returns something truthy (connection errors count as not yet)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            got = cond()
            if got:
                return got
        except OSError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"timed out waiting for {what}")


def write_config(work, key, name, listener, admin, permissions, extra="", upstream_extra=""):
    """`sidekey.toml` and its key file in `work`; returns the config's path."""
    with open(os.path.join(work, "api-key"), "w") as f:
        f.write(key)
    path = os.path.join(work, "sidekey.toml")
    with open(path, "w") as f:
        f.write(f"""
[listener]
address = "127.0.0.1:{listener}"
[admin]
address = "127.0.0.1:{admin}"
[upstream]
url = "https://api.example.invalid"
{upstream_extra}
[credential]
file = "api-key"
[service]
name = "{name}"
allow = ["read"]
[permissions]
{permissions}
{extra}
""")
    return path
