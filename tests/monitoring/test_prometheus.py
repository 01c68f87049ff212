"""A real Prometheus server scraping a running sidekey: the exposition parses with no errors
(the target is up with no scrape error), every metric the Grafana dashboard queries exists,
and the key-reload alert goes pending when an invalid key is written.

Run by tests/monitoring/run.sh; argv: sidekey binary, prometheus binary, repo root.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

from common import free_port, get, wait, write_config


def main():
    sidekey, prometheus, root = sys.argv[1], sys.argv[2], sys.argv[3]
    with tempfile.TemporaryDirectory() as work:
        key = os.path.join(work, "api-key")
        admin, listener = free_port(), free_port()
        config = write_config(work, "sk_prometheus_test_0001", "prom-test", listener, admin,
                              '"read" = ["GET /v1/x", { route = "GET /v1/stream", websocket = true }]',
                              '[reload]\ninterval = "1s"\ndebounce = "50ms"',
                              # A verify request (refused at once on loopback: no DNS, no network),
                              # so the verification series the dashboard queries exist.
                              'verify = "GET /v1/x"\nconnect_to = "127.0.0.1:9"')
        log = open(os.path.join(work, "sidekey.log"), "w")
        proc = subprocess.Popen([sidekey, "run", "--config", config], stdout=log, stderr=subprocess.STDOUT)
        # A second sidekey with a minted token whose endpoint refuses at once (loopback, no DNS),
        # so the token series the dashboard and alerts query exist.
        tok_admin, tok_listener = free_port(), free_port()
        with open(os.path.join(work, "secret"), "w") as f:
            f.write("cs_prometheus_0001")
        tok_config = os.path.join(work, "tokens.toml")
        with open(tok_config, "w") as f:
            f.write(f"""
[listener]
address = "127.0.0.1:{tok_listener}"
[admin]
address = "127.0.0.1:{tok_admin}"
[api.graph]
url = "https://api.example.invalid"
path_prefix = "/graph"
credential = {{ scheme = "oauth2_client_credentials", token_url = "https://idp.example.invalid/token", token_connect_to = "127.0.0.1:9", client_id = "cid", client_secret_file = "secret" }}
[api.graph.permissions]
"me" = ["GET /v1/me"]
[service]
name = "prom-tokens"
allow = ["graph/me"]
""")
        tok_proc = subprocess.Popen([sidekey, "run", "--config", tok_config], stdout=log, stderr=subprocess.STDOUT)
        prom_port = free_port()
        prom_cfg = os.path.join(work, "prometheus.yml")
        with open(prom_cfg, "w") as f:
            f.write(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {os.path.join(root, "deploy/monitoring/sidekey-alerts.yml")}
scrape_configs:
  - job_name: sidekey
    static_configs:
      - targets: ["127.0.0.1:{admin}"]
        labels: {{ namespace: test, pod: sidekey-0 }}
  - job_name: sidekey-tokens
    static_configs:
      - targets: ["127.0.0.1:{tok_admin}"]
        labels: {{ namespace: test-tokens, pod: sidekey-tokens-0 }}
""")
        plog = open(os.path.join(work, "prometheus.log"), "w")
        prom = subprocess.Popen([prometheus, f"--config.file={prom_cfg}", f"--storage.tsdb.path={work}/tsdb",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=plog, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{prom_port}/api/v1"
        try:
            def target_up():
                targets = get(f"{base}/targets")["data"]["activeTargets"]
                up = [t for t in targets if t["health"] == "up"]
                return len(up) == 2 and [t for t in up if t["labels"]["job"] == "sidekey"][0]
            target = wait("the sidekey target to be up", target_up)
            assert target["lastError"] == "", target
            print("prometheus scrapes sidekey: target up, no scrape error: ok")

            # Every metric the dashboard queries exists in what Prometheus scraped, before any
            # request was served (a panel or alert over an absent series shows nothing).
            with open(os.path.join(root, "deploy/monitoring/grafana-dashboard.json")) as f:
                dashboard = json.load(f)
            exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
            names = set(re.findall(r"\b(sidekey_[a-z_]+)", " ".join(exprs)))
            names = {n.removesuffix("_bucket") if n.endswith("_bucket") else n for n in names}
            missing = set()
            def known():
                have = set(get(f"{base}/label/__name__/values")["data"])
                missing.clear()
                missing.update(n for n in names if n not in have and n + "_bucket" not in have)
                return not missing and have
            try:
                wait("the dashboard's metrics", known, limit=30)
            except SystemExit:
                raise SystemExit(f"metrics the dashboard queries that sidekey does not export: {sorted(missing)}")
            print(f"grafana dashboard: {len(exprs)} queries, all {len(names)} metrics exist on a sidekey that served nothing: ok")

            # One refused request: its series move.
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{listener}/v1/denied", timeout=5)
            except urllib.error.HTTPError as e:
                assert e.code == 403, e

            # `sidekey rotation status` asks the same Prometheus which key every instance serves.
            fp = subprocess.run([sidekey, "fingerprint", key], check=True, capture_output=True, text=True).stdout.strip()
            def rotation(expect):
                return subprocess.run([sidekey, "rotation", "status", "--expect", expect, "--prometheus",
                                       f"http://127.0.0.1:{prom_port}", "--selector", '{namespace="test"}'],
                                      capture_output=True, text=True)
            r = wait("sidekey_credential_info in Prometheus", lambda: (r := rotation(fp)).returncode == 0 and r)
            assert fp in r.stdout and "old key can be revoked" in r.stdout, r.stdout
            r = rotation("000000000000")
            assert r.returncode == 1, (r.returncode, r.stdout)
            print("sidekey rotation status --prometheus: 0 on the served key, 1 on another: ok")

            with open(key, "w") as f:
                f.write("bad key with spaces\u0001")
            def pending():
                alerts = get(f"{base}/alerts")["data"]["alerts"]
                return [a for a in alerts if a["labels"]["alertname"] == "SidekeyKeyReloadFailing"
                        and a["state"] in ("pending", "firing")]
            got = wait("SidekeyKeyReloadFailing to go pending", pending)
            assert got[0]["labels"]["result"] == "invalid", got
            print("an invalid key turns SidekeyKeyReloadFailing pending: ok")
        finally:
            prom.terminate()
            proc.terminate()
            tok_proc.terminate()
            tok_proc.wait(timeout=30)
            prom.wait(timeout=30)
            proc.wait(timeout=30)
    print("monitoring: all passed")


if __name__ == "__main__":
    main()
