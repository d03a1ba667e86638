# Shared by the scripts: sourced, not run.

# need COMMAND PACKAGE...: installs the Debian packages when COMMAND is missing.
need() {
    local command=$1
    shift
    if command -v "$command" >/dev/null 2>&1 || [ -x "/usr/sbin/$command" ]; then
        return 0
    fi
    echo "==> installing $* (for $command)" >&2
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "error: $command is missing; install the Debian package(s) $* as root" >&2
            exit 1
        fi
        sudo=sudo
    fi
    if [ -z "${APT_UPDATED:-}" ]; then
        $sudo apt-get update -qq >&2
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}

# etcd_post HOST PORT PATH JSON: one POST to etcd's JSON gateway (plain bash, no curl); prints the
# response body, fails unless the status is 200.
etcd_post() {
    timeout 10 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" "$3" "$1" "${#4}" "$4" >&3
        IFS= read -r status <&3
        case "$status" in *" 200 "*) ;; *) exit 1 ;; esac
        sed "1,/^\r$/d" <&3
    ' _ "$@"
}

# etcd_answers HOST PORT: whether an etcd v3 JSON gateway answers there.
etcd_answers() {
    etcd_post "$1" "$2" /v3/kv/range '{"key":"AA=="}' >/dev/null 2>&1
}

# etcd_put_members HOST PORT PATTERN_PREFIX ZONE COUNT: writes COUNT member records
# (PREFIX1.ZONE ... with addresses 10.x.y.z), 100 per transaction, without leases.
etcd_put_members() {
    local host=$1 port=$2 prefix=$3 zone=$4 count=$5 i ops=""
    for ((i = 1; i <= count; i++)); do
        local key value
        key=$(printf '%s%d.%s' "$prefix" "$i" "$zone" | base64 -w0)
        value=$(printf '{"ipv4":"10.%d.%d.%d","port":"53"}' $((i >> 16 & 255)) $((i >> 8 & 255)) $((i & 255)) | base64 -w0)
        ops+="${ops:+,}{\"requestPut\":{\"key\":\"$key\",\"value\":\"$value\"}}"
        if ((i % 100 == 0 || i == count)); then
            etcd_post "$host" "$port" /v3/kv/txn "{\"success\":[$ops]}" >/dev/null
            ops=""
        fi
    done
}

# free_port: a TCP port nothing listens on right now, below the kernel's ephemeral range, so that
# no outgoing connection holds it either by the time it is bound.
free_port() {
    local port low
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    while :; do
        port=$((10000 + RANDOM % (low - 10000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

# start_etcd DIR CLIENT_PORT PEER_PORT [ETCD_FLAG...]: a throwaway single-member etcd on loopback;
# its PID is written to DIR/etcd.pid and its log to DIR/etcd.log.
start_etcd() {
    local dir=$1 port=$2 client="http://127.0.0.1:$2" peer="http://127.0.0.1:$3"
    shift 3
    etcd --name local --data-dir "$dir/data" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "local=$peer" "$@" >"$dir/etcd.log" 2>&1 &
    echo $! >"$dir/etcd.pid"
    for _ in $(seq 100); do
        if etcd_answers 127.0.0.1 "$port"; then
            return 0
        fi
        sleep 0.1
    done
    echo "error: etcd did not start; its log:" >&2
    cat "$dir/etcd.log" >&2
    return 1
}

# start_etcd_on_free_ports DIR [ETCD_FLAG...]: start_etcd on free ports; sets ETCD_PORT to its
# client port. Another program may take a free port before etcd binds it: then it tries other ports.
start_etcd_on_free_ports() {
    local dir=$1 attempt
    shift
    for attempt in 1 2 3; do
        ETCD_PORT=$(free_port)
        if start_etcd "$dir" "$ETCD_PORT" "$(free_port)" "$@" 2>"$dir/etcd.start"; then
            return 0
        fi
        kill "$(cat "$dir/etcd.pid")" 2>/dev/null || true
        if [ "$attempt" = 3 ] || ! grep -q "address already in use" "$dir/etcd.log"; then
            cat "$dir/etcd.start" >&2
            return 1
        fi
        rm -rf "$dir/data"
    done
}
