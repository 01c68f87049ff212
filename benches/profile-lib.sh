# Helpers shared by benches/fixed-rate-profile.sh and benches/forward-profile.sh (sourced).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

render() { # SRC DST KEY=VAL...: the peer harness's @KEY@ templates
  local src="$1" dst="$2" args=() kv
  shift 2
  for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${args[@]}" "$src" > "$dst"
}

wait_ok() { for _ in $(seq 1 200); do curl -s -o /dev/null "$@" && return 0; sleep 0.05; done; return 1; }

# start_upstream PEERS PKI WORK: the harness's nginx upstream (its template and CA) on free
# ports; sets up_port, up_status and appends its PID to pids.
start_upstream() {
  local peers="$1" pki="$2" work="$3" nginx_bin
  nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
  up_port="$(free_port)" up_status="$(free_port)"
  mkdir -p "$work/upstream-tmp"
  render "$peers/conf/upstream-nginx.conf" "$work/upstream.conf" UP_WORKERS="$(nproc)" \
    RUNDIR="$work" UP_PORT="$up_port" UP_STATUS_PORT="$up_status" PKI="$pki"
  "$nginx_bin" -e "$work/upstream.error.log" -p "$work" -c "$work/upstream.conf" > "$work/upstream.out" 2>&1 &
  pids+=($!)
  wait_ok "http://127.0.0.1:$up_status/status"
}

# secret_dir DIR KEY: a Kubernetes-style secret volume (DIR/key -> ..data/key -> ..<stamp>/key).
secret_dir() {
  mkdir -p "$1/..2026_01_01.1"
  printf %s "$2" > "$1/..2026_01_01.1/key"
  ln -s ..2026_01_01.1 "$1/..data"
  ln -s ..data/key "$1/key"
}

# syscalls_per STRACE_C_FILE N: each syscall's calls per request (or tunnel), 0.01 and up.
syscalls_per() {
  awk -v n="$2" '$1 ~ /^[0-9.]+$/ && NF >= 5 { calls = $4; name = $NF; if (n > 0 && calls / n >= 0.01) printf "  %-16s %6.2f\n", name, calls / n }' "$1" | sort -k2 -rn
}

# perf_summary PERF_DATA TOP: share of samples by DSO, then the top symbols by self time.
perf_summary() {
  echo "perf: share of samples by DSO"
  perf report -i "$1" --no-children --sort dso --stdio 2> /dev/null \
    | awk '/^ +[0-9.]+%/ { printf "  %s %s\n", $1, $2 }' | head -8
  echo "perf: top symbols by self time"
  perf report -i "$1" --no-children --sort sym --stdio -g none 2> /dev/null \
    | awk '/^ +[0-9.]+%/ { $2 = ""; print "  " $0 }' | head -"$2"
}
