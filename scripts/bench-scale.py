#!/usr/bin/env python3
"""The measuring side of scripts/bench-scale, which starts etcd and runs this; see there for what
is measured. Python rather than bash for the clocks and the socket loops: a DNS probe that asks a
node every fraction of a millisecond, etcd's gateway through one kept-alive HTTP connection, and
a counting TCP proxy between the node under test and etcd (`bench-scale.py proxy`).

CPU time is read from /proc/PID/task/*/schedstat (nanoseconds, per thread), not from the clock
ticks of /proc/PID/stat, which are 10 ms each: the goals are fractions of a millisecond per
second. Threads that ended are no longer counted there; the daemon's threads live as long as it
does, and so do etcd's (Go keeps its threads).
"""

import argparse
import base64
import fcntl
import http.client
import json
import math
import os
import random
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

PATTERN = "worker{{.ID}}.scale.test."
ZONE = "scale.test."
NODE_IP = "127.4.0.1"  # the node under test; the idle nodes are 127.3.x.y, scripts/bench-claim's 127.2.x.y
LOAD_BATCH = 128  # etcd's default --max-txn-ops
BURST = 1000
BURST_TXNS = 8
SMALL_N = 1000  # the member count memory per member is measured against
WAVE = 25  # idle nodes started at a time


def log(message):
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", file=sys.stderr, flush=True)


T0 = time.monotonic()


# ---- members ------------------------------------------------------------------------------------


def name_of(i):
    return f"worker{i}.{ZONE}"


def address_of(i):
    """The address a loaded or joining member publishes: 10.x.y.z from its ID, as common.sh does."""
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def b64(text):
    return base64.b64encode(text.encode()).decode()


def put_op(i, address):
    value = json.dumps({"ipv4": address, "port": "53"}, separators=(",", ":"))
    return {"requestPut": {"key": b64(name_of(i)), "value": b64(value)}}


def delete_op(i):
    return {"requestDeleteRange": {"key": b64(name_of(i))}}


# ---- etcd ---------------------------------------------------------------------------------------


class Etcd:
    """etcd's JSON gateway over one kept-alive connection."""

    def __init__(self, port):
        self.port = port
        self.connection = None

    def request(self, method, path, body=None):
        for attempt in (1, 2):
            try:
                if self.connection is None:
                    self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                    self.connection.connect()
                    self.connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
            except (http.client.HTTPException, OSError):
                # A kept-alive connection etcd closed meanwhile; loading puts are idempotent.
                self.close()
                if attempt == 2:
                    raise
                continue
            if response.status != 200:
                raise RuntimeError(f"etcd {path}: HTTP {response.status}: {data[:300]!r}")
            return data

    def txn(self, ops):
        return json.loads(self.request("POST", "/v3/kv/txn", json.dumps({"success": ops}).encode()))

    def load(self, first, last):
        for start in range(first, last + 1, LOAD_BATCH):
            end = min(start + LOAD_BATCH, last + 1)
            self.txn([put_op(i, address_of(i)) for i in range(start, end)])

    def requests(self):
        """gRPC messages etcd received from clients so far, by method (the JSON gateway turns
        every HTTP request into one: a unary call, or a stream's first message); and the seconds
        etcd spent handling unary calls, by method (grpc_server_handling_seconds_sum, there with
        --metrics extensive), as {method: count}, {method: (calls, seconds)}."""
        counts, handling = {}, {}
        for line in self.request("GET", "/metrics").decode().splitlines():
            kind = line.split("{", 1)[0]
            if kind not in (
                "grpc_server_msg_received_total",
                "grpc_server_handling_seconds_sum",
                "grpc_server_handling_seconds_count",
            ):
                continue
            method = re.search(r'grpc_method="([^"]*)"', line).group(1)
            value = float(line.rsplit(" ", 1)[1])
            if kind == "grpc_server_msg_received_total":
                counts[method] = counts.get(method, 0) + value
            else:
                calls, seconds = handling.get(method, (0, 0.0))
                handling[method] = (calls + value, seconds) if kind.endswith("count") else (calls, seconds + value)
        return counts, handling

    def close(self):
        if self.connection is not None:
            self.connection.close()
        self.connection = None


# ---- the counting proxy -------------------------------------------------------------------------

F_SETPIPE_SZ = 1031
REQUEST_LINE = re.compile(rb"(?:GET|POST|PUT|DELETE) (/[^ ?\r\n]*)[^\r\n]* HTTP/1\.[01]\r\n")


def run_proxy(target_port):
    """Forwards 127.0.0.1:PORT (printed first) to etcd; prints its counters as JSON for every line
    read on stdin: bytes each way, and the node's HTTP requests by path."""
    lock = threading.Lock()
    counts = {"down": 0, "up": 0, "requests": {}}

    def pump_up(source, sink):
        """The node's requests: read, to find the request lines."""
        tail = b""
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                sink.sendall(data)
                text = tail + data
                paths = [m.group(1).decode() for m in REQUEST_LINE.finditer(text) if m.end() > len(tail)]
                tail = text[-512:]
                with lock:
                    counts["up"] += len(data)
                    for path in paths:
                        counts["requests"][path] = counts["requests"].get(path, 0) + 1
        except OSError:
            pass
        finally:
            close_write(sink)

    def pump_down(source, sink):
        """etcd's answers, the bulk: moved through a pipe within the kernel (splice), only counted."""
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass  # a smaller pipe only means more calls
        try:
            while True:
                n = os.splice(source.fileno(), w, 1 << 20)
                if n == 0:
                    break
                left = n
                while left:
                    left -= os.splice(r, sink.fileno(), left)
                with lock:
                    counts["down"] += n
        except OSError:
            pass
        finally:
            os.close(r)
            os.close(w)
            close_write(sink)

    def close_write(sink):
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def serve(client):
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port))
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        down = threading.Thread(target=pump_down, args=(upstream, client), daemon=True)
        down.start()
        pump_up(client, upstream)
        down.join()
        client.close()
        upstream.close()

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)

    def accept():
        while True:
            client, _ = listener.accept()
            threading.Thread(target=serve, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    for _ in sys.stdin:
        with lock:
            print(json.dumps(counts), flush=True)


class Proxy:
    def __init__(self, target_port):
        self.process = subprocess.Popen(
            [sys.executable, __file__, "proxy", str(target_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port = int(self.process.stdout.readline())

    def counts(self):
        self.process.stdin.write("?\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def stop(self):
        self.process.kill()
        self.process.wait()


# ---- DNS ----------------------------------------------------------------------------------------


def dns_query(qid, name):
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.rstrip(".").split("."))
    return struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0) + labels + b"\0" + struct.pack(">HH", 1, 1)


def skip_name(packet, at):
    while True:
        length = packet[at]
        if length >= 0xC0:
            return at + 2
        at += 1 + length
        if length == 0:
            return at


def dns_answer(packet):
    """(rcode, [IPv4 addresses in the answer section])"""
    qid, flags, qdcount, ancount = struct.unpack(">HHHH", packet[:8])
    at = 12
    for _ in range(qdcount):
        at = skip_name(packet, at) + 4
    addresses = []
    for _ in range(ancount):
        at = skip_name(packet, at)
        rtype, _, _, length = struct.unpack(">HHIH", packet[at : at + 10])
        at += 10
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(packet[at : at + 4]))
        at += length
    return flags & 15, addresses


def has(address):
    return lambda answer: answer[0] == 0 and address in answer[1]


def gone(answer):
    return answer[0] == 3


class Prober:
    """Asks nodes over UDP, one question in flight; counts the questions, whose cost on the node's
    answering thread is subtracted from the cost of a change."""

    def __init__(self, port):
        self.port = port
        self.sockets = {}
        self.queries = 0

    def ask(self, ip, name, timeout=1.0):
        s = self.sockets.get(ip)
        if s is None:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect((ip, self.port))
            self.sockets[ip] = s
        qid = random.randrange(65536)
        deadline = time.monotonic() + timeout
        try:
            s.send(dns_query(qid, name))
            self.queries += 1
            while True:
                s.settimeout(max(deadline - time.monotonic(), 0.001))
                packet = s.recv(65535)
                if len(packet) >= 12 and struct.unpack(">H", packet[:2])[0] == qid:
                    return dns_answer(packet)
        except (socket.timeout, ConnectionRefusedError):
            # Nothing bound there yet (ICMP port unreachable), or no answer in time.
            return None

    def wait(self, ip, name, want, since, timeout):
        """Seconds from `since` until an answer from ip for name satisfies want; None if it does
        not within timeout. The pause between questions grows with the time waited (2% of it,
        0.2 to 5 ms), so the answering thread is not kept busy by the probe."""
        deadline = since + timeout
        while True:
            answer = self.ask(ip, name)
            now = time.monotonic()
            if answer is not None and want(answer):
                return now - since
            if now > deadline:
                return None
            time.sleep(min(max(0.0002, (now - since) / 50), 0.005))


# ---- /proc --------------------------------------------------------------------------------------


def threads_cpu(pid):
    """CPU nanoseconds by thread name (threads of one name summed)."""
    totals = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return totals
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
        # udp-0, udp-1: the answering threads, one figure.
        name = "udp" if name.startswith("udp-") else name
        totals[name] = totals.get(name, 0) + ns
    return totals


def process_cpu(pid):
    return sum(threads_cpu(pid).values())


def memory_kb(pid):
    """(VmRSS, VmHWM) in kB"""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def settled_memory_kb(pid, longest=10.0):
    """Memory once RSS stays within 1% for a second (freed heap is handed back after a build)."""
    deadline = time.monotonic() + longest
    previous = memory_kb(pid)
    while time.monotonic() < deadline:
        time.sleep(1)
        current = memory_kb(pid)
        if abs(current[0] - previous[0]) <= previous[0] / 100:
            return current
        previous = current
    return previous


def mem_available_kb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


# ---- nodes --------------------------------------------------------------------------------------

LIVE = []  # every node process started, stopped at exit whatever happens


class Node:
    def __init__(self, args, label, ip, dns_port, etcd_port, limit, endpoints=None, lines=()):
        self.ip = ip
        endpoints = endpoints or f"http://127.0.0.1:{etcd_port}"
        self.corefile = os.path.join(args.work, f"Corefile.{label}")
        self.log_path = os.path.join(args.work, f"log.{label}")
        extras = "".join(f"        {line}\n" for line in [*lines, *args.with_])
        with open(self.corefile, "w") as f:
            f.write(
                f".:{dns_port} {{\n    bind {ip}\n    idetcd {{\n"
                f"        endpoint {endpoints}\n"
                f"        limit {limit}\n        pattern {PATTERN}\n        address {ip}\n{extras}"
                f"    }}\n}}\n"
            )
        self.bin = args.bin
        self.process = None

    def start(self):
        with open(self.log_path, "w") as log_file:
            self.process = subprocess.Popen(
                [self.bin, "-conf", self.corefile], stdout=subprocess.DEVNULL, stderr=log_file
            )
        LIVE.append(self.process)
        return self.process.pid

    @property
    def pid(self):
        return self.process.pid

    def alive(self):
        return self.process.poll() is None


def stop_all(processes, grace=15.0):
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p in LIVE:
            LIVE.remove(p)


def free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_etcd_cluster(work, size):
    """`size` etcd members on free loopback ports, forming one cluster, each in a data directory
    of its own under `work`; returns [(client port, process)] once every member answers."""
    ports = [(free_tcp_port(), free_tcp_port()) for _ in range(size)]
    initial = ",".join(f"m{k}=http://127.0.0.1:{peer}" for k, (_, peer) in enumerate(ports))
    members = []
    for k, (client, peer) in enumerate(ports):
        data = os.path.join(work, f"cluster-m{k}")
        with open(data + ".log", "w") as log_file:
            process = subprocess.Popen(
                ["etcd", "--name", f"m{k}", "--data-dir", data]
                + ["--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}"]
                + ["--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}"]
                + ["--initial-cluster", initial],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        LIVE.append(process)
        members.append((client, process))
    deadline = time.monotonic() + 30
    for client, _ in members:
        while True:
            try:
                Etcd(client).request("POST", "/v3/kv/range", b'{"key":"AA=="}')
                break
            except (RuntimeError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the three-member etcd did not start (logs in {work}/cluster-m*.log)")
                time.sleep(0.2)
    return members


def free_dns_port():
    """A port free for UDP and TCP on every address: nodes on different loopback addresses share it."""
    while True:
        port = random.randrange(10000, 32000)
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("0.0.0.0", port))
            return port
        except OSError:
            continue


# ---- windows: what happened between two samples -------------------------------------------------


class Sample:
    def __init__(self, bench):
        self.time = time.monotonic()
        self.node = threads_cpu(bench.node.pid) if bench.node else {}
        self.etcd = process_cpu(bench.etcd_pid)
        self.proxy = bench.proxy.counts() if bench.proxy else {"down": 0, "up": 0, "requests": {}}
        self.queries = bench.prober.queries


class Window:
    def __init__(self, before, after):
        self.seconds = after.time - before.time
        self.node = {k: v - before.node.get(k, 0) for k, v in after.node.items()}
        self.etcd = after.etcd - before.etcd
        self.down = after.proxy["down"] - before.proxy["down"]
        self.up = after.proxy["up"] - before.proxy["up"]
        self.requests = {
            k: v - before.proxy["requests"].get(k, 0)
            for k, v in after.proxy["requests"].items()
            if v - before.proxy["requests"].get(k, 0)
        }
        self.queries = after.queries - before.queries


class Cost:
    """What a window cost beyond idling, per change: the idle rates times the window's length and
    the probe's questions are taken off."""

    def __init__(self, window, idle, per_query_ns, changes):
        self.changes = changes
        self.threads = {}
        for name, ns in window.node.items():
            ns -= idle.node.get(name, 0) / idle.seconds * window.seconds
            if name == "udp":
                ns -= window.queries * per_query_ns
            self.threads[name] = max(ns, 0) / changes / 1e6
        self.node_ms = sum(self.threads.values())
        self.etcd_ms = max(window.etcd - idle.etcd / idle.seconds * window.seconds, 0) / changes / 1e6
        self.down_bytes = max(window.down - idle.down / idle.seconds * window.seconds, 0) / changes
        idle_requests = sum(idle.requests.values()) / idle.seconds * window.seconds
        self.requests = max(sum(window.requests.values()) - idle_requests, 0) / changes

    def by_thread(self):
        return (
            ", ".join(
                f"{name} {ms:.2f}" for name, ms in sorted(self.threads.items(), key=lambda kv: -kv[1]) if ms >= 0.005
            )
            or "-"
        )


def percentile(values, p):
    """Nearest rank: the smallest value that at least p% of the values do not exceed."""
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1]


# ---- the benchmark ------------------------------------------------------------------------------


class Row:
    def __init__(self, figure, n, value, unit, goal=None, text=None, bound=""):
        self.figure, self.n, self.value, self.unit, self.goal, self.text, self.bound = (
            figure,
            n,
            value,
            unit,
            goal,
            text,
            bound,
        )


class Bench:
    def __init__(self, args):
        self.args = args
        self.etcd = Etcd(args.etcd_port)
        self.etcd_pid = args.etcd_pid
        self.node = None
        self.proxy = None
        self.dns_port = free_dns_port()
        self.prober = Prober(self.dns_port)
        self.rows = []
        self.reclaims = 0
        self.loaded = 0

    def row(self, *a, **kw):
        self.rows.append(Row(*a, **kw))

    def out(self, text=""):
        print(text, flush=True)

    def load_to(self, n):
        if n > self.loaded:
            log(f"loading members {self.loaded + 1}..{n} into etcd ({LOAD_BATCH} puts per transaction)")
            started = time.monotonic()
            self.etcd.load(self.loaded + 1, n)
            log(f"loaded in {time.monotonic() - started:.1f} s")
            self.loaded = n

    def limit_for(self, n):
        # The node claims n+1 (the M idle nodes n+1..n+M); joins and bursts use IDs past those.
        return self.burst_first(n) + BURST + 10

    def join_first(self, n):
        return n + self.args.nodes + 101

    def burst_first(self, n):
        return self.join_first(n) + self.args.repeat + 100

    def idle_window(self, seconds):
        before = Sample(self)
        requests_before, handling_before = self.etcd.requests()
        time.sleep(seconds)
        requests_after, handling_after = self.etcd.requests()
        window = Window(before, Sample(self))
        window.etcd_requests = {
            k: v - requests_before.get(k, 0) for k, v in requests_after.items() if v - requests_before.get(k, 0)
        }
        window.etcd_handling = {}
        for k, (calls, spent) in handling_after.items():
            calls0, spent0 = handling_before.get(k, (0, 0.0))
            if calls > calls0:
                window.etcd_handling[k] = (calls - calls0, spent - spent0)
        return window

    def start_node(self, n, proxied):
        """Starts the node under test; returns the seconds from exec until it answers member n."""
        if proxied:
            self.proxy = Proxy(self.args.etcd_port)
        node = Node(
            self.args,
            f"node-{n}",
            NODE_IP,
            self.dns_port,
            self.proxy.port if proxied else self.args.etcd_port,
            self.limit_for(n),
            # Kept on the proxy: once it read etcd's member list, a node would use the member's own
            # client URL, and the proxy would count nothing (one read of the list every 5 minutes
            # by default: 0.003 requests/s, left out).
            lines=["autosync off"] if proxied else [],
        )
        started = time.monotonic()
        node.start()
        self.node = node
        want = has(address_of(n))
        while True:
            # A second at a time, to notice a node that exits (a Corefile it does not take, say).
            waited = time.monotonic() - started
            seconds = self.prober.wait(NODE_IP, name_of(n), want, started, waited + 1)
            if seconds is not None:
                return seconds
            if not node.alive() or waited > 120:
                with open(node.log_path) as f:
                    tail = "".join(f.readlines()[-3:])
                why = f"exited with {node.process.returncode}" if not node.alive() else "did not answer within 120 s"
                raise RuntimeError(f"the node {why}; the end of its log:\n{tail}")

    def stop_node(self):
        stop_all([self.node.process])
        self.node = None
        if self.proxy:
            self.proxy.stop()
            self.proxy = None

    # -- 4. memory at a small N, to subtract ----------------------------------------------------
    def small_memory(self):
        self.load_to(SMALL_N)
        self.start_node(SMALL_N, proxied=False)
        rss, _ = settled_memory_kb(self.node.pid)
        self.stop_node()
        log(f"RSS with {SMALL_N} members: {rss / 1024:.1f} MB")
        return rss

    def stage(self, n, small_rss):
        a = self.args
        self.out(f"\n== {n} members " + "=" * 60)
        self.load_to(n)

        # 2. etcd's own idle cost, before the node: once the load's aftermath (Go's collector giving
        # memory back) has died down, which takes etcd's rate a millisecond a second off.
        self.settle_etcd(longest=30.0)
        log(f"etcd alone, {a.window:.0f} s")
        baseline = self.idle_window(a.window)
        baseline_rate = baseline.etcd / baseline.seconds / 1e6

        # 1. start: the median of three, as one start varies by a few tenths of a second with
        # etcd's garbage collection, without the proxy, which takes a few milliseconds to pass on
        # each connection and a claim opens two at 100 000 members. Then the node under test
        # starts through the proxy, which counts what it reads.
        starts = []
        for _ in range(3):
            starts.append(self.start_node(n, proxied=False))
            self.stop_node()
            # The name goes back at once; the node under test takes it again.
            time.sleep(1)
        start_seconds = statistics.median(starts)
        log("starting the node under test")
        etcd_before = process_cpu(self.etcd_pid)
        proxied_seconds = self.start_node(n, proxied=True)
        start_etcd_ms = (process_cpu(self.etcd_pid) - etcd_before) / 1e6 - baseline_rate * proxied_seconds
        start_down = self.proxy.counts()["down"]
        start_cpu_ms = process_cpu(self.node.pid) / 1e6
        self.out(
            f"start: answers every member after {start_seconds * 1000:.0f} ms (median of"
            f" {', '.join(f'{s * 1000:.0f}' for s in starts)}; {proxied_seconds * 1000:.0f} through the"
            f" byte-counting proxy); it read {start_down / 1e6:.1f} MB from etcd,"
        )
        self.out(f"       used {start_cpu_ms:.0f} ms of CPU, and etcd {start_etcd_ms:.0f} ms beyond its idle")
        self.row("start: exec to answering every member", n, start_seconds, "s", goal=1.0 if n <= 100000 else None)

        # 2. idle, one node.
        self.settle_etcd(longest=30.0)
        log(f"one node idle, {a.window:.0f} s")
        idle = self.idle_window(a.window)
        rss, hwm = settled_memory_kb(self.node.pid)
        idle_etcd = idle.etcd / idle.seconds / 1e6
        node_idle = {k: v / idle.seconds / 1e6 for k, v in idle.node.items()}
        proxy_rps = sum(idle.requests.values()) / idle.seconds
        etcd_rps = sum(idle.etcd_requests.values()) / idle.seconds
        self.out(f"idle, one node, {idle.seconds:.0f} s:")
        self.out(
            f"  etcd CPU                 {idle_etcd:8.2f} ms/s"
            f" ({baseline_rate:.2f} alone, so {idle_etcd - baseline_rate:.2f} for the node)"
        )
        self.out(
            f"  node CPU                 {sum(node_idle.values()):8.3f} ms/s: "
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(node_idle.items(), key=lambda kv: -kv[1]))
        )
        self.out(
            f"  requests to etcd         {proxy_rps:8.2f} /s (the node's HTTP requests, counted by a proxy): "
            + _rates(idle.requests, idle.seconds)
        )
        self.out(
            f"                           {etcd_rps:8.2f} /s (etcd's grpc_server_msg_received_total): "
            + _rates(idle.etcd_requests, idle.seconds)
        )
        self.out(f"  etcd's time per request  " + _handling(idle))
        self.out(f"  bytes from etcd          {idle.down / idle.seconds:8.0f} B/s")
        self.out(f"  memory                   {rss / 1024:8.1f} MB RSS, {hwm / 1024:.1f} MB peak (VmHWM)")
        per_member = (rss - small_rss) * 1024 / (n - SMALL_N)
        self.out(
            f"  per member               {per_member:8.0f} bytes ((RSS - RSS with {SMALL_N} members) / {n - SMALL_N})"
        )
        # etcd's own idle rate drifts by a millisecond a second between windows, ten times what one
        # node costs it: the row is set again against etcd alone before and after this window, and
        # the goal is judged by the M idle nodes' row (5), which measures the cost M times over.
        self.row("idle, one node: etcd CPU beyond etcd alone (±1)", n, idle_etcd - baseline_rate, "ms/s")
        self.single_idle = (idle_etcd, baseline_rate, self.rows[-1])
        self.row("idle, one node: requests to etcd", n, proxy_rps, "/s", goal=0.2)
        self.row("idle, one node: node CPU", n, sum(node_idle.values()), "ms/s", goal=0.2)
        rss_goal = {10000: 6.0, 100000: 32.0}.get(n)
        self.row("memory: RSS", n, rss / 1024, "MB", goal=rss_goal)
        self.row("memory: peak RSS (VmHWM)", n, hwm / 1024, "MB")
        self.row("memory: bytes per member", n, per_member, "B")
        self.single_hwm = hwm

        # Calibration: what one probe question costs the answering thread.
        per_query_ns = self.calibrate(n, idle)
        self.out(
            f"  a probe question costs   {per_query_ns / 1000:8.1f} us of the answering thread"
            " (subtracted from changes below)"
        )

        # 3. changes.
        self.changes(n, idle, per_query_ns)
        self.bursts(n, idle, per_query_ns)
        self.stop_node()

        # 5. M idle nodes.
        self.idle_nodes(n, idle)

    def calibrate(self, n, idle):
        before = Sample(self)
        name, want = name_of(n), has(address_of(n))
        for _ in range(1000):
            answer = self.prober.ask(NODE_IP, name)
            assert answer is not None and want(answer), f"the node stopped answering {name}"
            time.sleep(0.0003)
        window = Window(before, Sample(self))
        udp = window.node.get("udp", 0) - idle.node.get("udp", 0) / idle.seconds * window.seconds
        return max(udp, 0) / window.queries

    def series(self, n, kind, ids, op, want_of, idle, per_query_ns):
        """Makes the changes one after the other, each once the previous one shows, until the IDs
        or the time budget run out; returns the IDs done."""
        a = self.args
        before = Sample(self)
        visible, committed, done = [], [], []
        started = time.monotonic()
        for i in ids:
            if done and time.monotonic() - started > a.budget:
                break
            if visible:
                # A random pause up to the last change's time to show: changes then fall at every
                # point of a periodic poll's cycle, instead of just after the poll that showed the
                # last one; with a watch the pause is a few milliseconds.
                time.sleep(random.uniform(0, min(visible[-1], 2.0)))
            op_, want = op(i), want_of(i)
            sent = time.monotonic()
            self.etcd.txn([op_])
            committed.append(time.monotonic() - sent)
            seconds = self.prober.wait(NODE_IP, name_of(i), want, sent, 30)
            if seconds is None:
                self.out(f"  {kind}: {name_of(i)} did not show within 30 s")
                break
            visible.append(seconds)
            done.append(i)
        time.sleep(a.settle)
        cost = Cost(Window(before, Sample(self)), idle, per_query_ns, max(len(done), 1))
        goal = 0.020 if kind in ("join", "leave") else None
        if not done:
            self.row(f"{kind}: put to answer, p99", n, None, "s", goal=goal, text="not within 30 s")
            return done
        p50, p99, top = (percentile(visible, p) * 1000 for p in (50, 99, 100))
        self.out(
            f"  {kind:<9} {len(done):4d}   {p50:8.1f} {p99:8.1f} {top:8.1f}"
            f"   {statistics.median(committed) * 1000:6.1f}   {cost.down_bytes / 1024:9.2f} {cost.requests:6.2f}"
            f" {cost.etcd_ms:9.2f}  {cost.node_ms:9.2f}  {cost.by_thread()}"
        )
        self.row(
            f"{kind}: put to answer, p99",
            n,
            p99 / 1000,
            "s",
            goal=goal,
            text=f"{p99:.1f} ms (p50 {p50:.1f}, n={len(done)})",
        )
        self.row(f"{kind}: bytes from etcd to the node", n, cost.down_bytes / 1024, "KB", goal=2.0)
        self.row(f"{kind}: node CPU", n, cost.node_ms, "ms", goal=2.0)
        self.row(f"{kind}: etcd CPU", n, cost.etcd_ms, "ms")
        return done

    def changes(self, n, idle, per_query_ns):
        a = self.args
        self.out(
            f"\nchanges, one at a time, each once the last shows (at most {a.repeat} or {a.budget:.0f} s of each;"
            " the node's idle cost,"
        )
        self.out(" the probe's questions and, for etcd, its idle rate with the node are subtracted):")
        self.out(
            f"  {'':<9} {'n':>4}   {'to answer, ms':^26}   {'put':>6}   {'from etcd':>9} {'reqs':>6}"
            f" {'etcd CPU':>9}  {'node CPU':>9}  node CPU by thread"
        )
        self.out(
            f"  {'':<9} {'':>4}   {'p50':>8} {'p99':>8} {'max':>8}   {'ms':>6}   {'KB':>9} {'':>6}"
            f" {'ms':>9}  {'ms':>9}  ms"
        )
        first = self.join_first(n)
        ids = range(first, first + a.repeat)
        joined = self.series(
            n, "join", ids, lambda i: put_op(i, address_of(i)), lambda i: has(address_of(i)), idle, per_query_ns
        )
        self.series(n, "leave", joined, delete_op, lambda i: gone, idle, per_query_ns)
        # Re-claims: existing members, spread over the range, each with an address never used.
        step = max(n // a.repeat, 1)
        addresses = {}

        def reclaim(i):
            self.reclaims += 1
            c = self.reclaims
            addresses[i] = f"172.{16 + (c >> 16 & 15)}.{c >> 8 & 255}.{c & 255}"
            return put_op(i, addresses[i])

        # want_of(i) is asked after op(i), which chose the address.
        self.series(n, "re-claim", range(1, n + 1, step), reclaim, lambda i: has(addresses[i]), idle, per_query_ns)

    def bursts(self, n, idle, per_query_ns):
        a = self.args
        self.out(
            f"\nbursts of {BURST} changes (visible: until the last key of every transaction shows;"
            " then every key is checked):"
        )
        self.out(
            f"  {'':<36} {'commit':>8} {'visible':>9}   {'from etcd':>9} {'etcd CPU':>9} {'node CPU':>9}"
            "  node CPU by thread"
        )
        self.out(f"  {'':<36} {'ms':>8} {'ms':>9}   {'KB':>9} {'ms':>9} {'ms':>9}  ms")
        first = self.burst_first(n)
        ids = list(range(first, first + BURST))
        join = lambda i: put_op(i, address_of(i))
        self.burst(n, f"{BURST} joins, one transaction", ids, join, lambda i: has(address_of(i)), 1, idle, per_query_ns)
        self.burst(n, f"{BURST} leaves, one transaction", ids, delete_op, lambda i: gone, 1, idle, per_query_ns)
        self.burst(
            n,
            f"{BURST} joins, {BURST_TXNS} transactions at once",
            ids,
            join,
            lambda i: has(address_of(i)),
            BURST_TXNS,
            idle,
            per_query_ns,
        )
        self.burst(
            n,
            f"{BURST} leaves, {BURST_TXNS} transactions at once",
            ids,
            delete_op,
            lambda i: gone,
            BURST_TXNS,
            idle,
            per_query_ns,
        )

    def burst(self, n, label, ids, op, want_of, txns, idle, per_query_ns):
        a = self.args
        chunks = [ids[k::txns] for k in range(txns)]
        clients = [Etcd(a.etcd_port) for _ in chunks]
        for c in clients:
            c.request("GET", "/version")  # connected before the clock starts
        before = Sample(self)
        gate = threading.Barrier(len(chunks) + 1)
        acks = [None] * len(chunks)

        def send(k):
            gate.wait()
            clients[k].txn([op(i) for i in chunks[k]])
            acks[k] = time.monotonic()

        threads = [threading.Thread(target=send, args=(k,)) for k in range(len(chunks))]
        for t in threads:
            t.start()
        gate.wait()
        sent = time.monotonic()
        for t in threads:
            t.join()
        visible = 0.0
        for chunk in chunks:
            seconds = self.prober.wait(NODE_IP, name_of(chunk[-1]), want_of(chunk[-1]), sent, 60)
            if seconds is None:
                visible = None
                break
            visible = max(visible, seconds)
        missing = (
            sum(1 for i in ids if not _answered(self.prober, name_of(i), want_of(i)))
            if visible is not None
            else len(ids)
        )
        time.sleep(a.settle)
        cost = Cost(Window(before, Sample(self)), idle, per_query_ns, 1)
        for c in clients:
            c.close()
        commit = (max(acks) - sent) * 1000 if all(acks) else float("nan")
        shown = f"{visible * 1000:9.1f}" if visible is not None else "   > 60 s"
        note = f"  ({missing} keys not yet shown then)" if missing else ""
        self.out(
            f"  {label:<36} {commit:8.1f} {shown}   {cost.down_bytes / 1024:9.1f} {cost.etcd_ms:9.1f}"
            f" {cost.node_ms:9.1f}  {cost.by_thread()}{note}"
        )
        self.row(f"burst, {label}: visible", n, visible, "s", text=None if visible is not None else "not within 60 s")
        self.row(f"burst, {label}: node CPU", n, cost.node_ms, "ms")

    def idle_nodes(self, n, single_idle):
        a = self.args
        # Every node reads every member: keep their peak memory well inside what is free.
        room = int(mem_available_kb() * 0.5 / max(self.single_hwm, 1))
        m = min(a.nodes, room)
        if m < 1:
            self.out(f"\n{a.nodes} idle nodes: not run, too little memory ({mem_available_kb() // 1024} MB available)")
            return
        self.out(
            f"\n{m} idle nodes"
            + (
                f" (not {a.nodes}: each peaks at {self.single_hwm // 1024} MB"
                f" and {mem_available_kb() // 1024} MB are available)"
                if m < a.nodes
                else ""
            )
            + ":"
        )
        self.settle_etcd(longest=30.0)
        log(f"etcd alone again, {a.window:.0f} s")
        baseline = self.idle_window(a.window)
        idle_etcd, before, single_row = self.single_idle
        after = baseline.etcd / baseline.seconds / 1e6
        single_row.value = idle_etcd - (before + after) / 2
        self.out(
            f"  one node idle, against etcd alone before and after it ({before:.2f} and {after:.2f} ms/s):"
            f" {single_row.value:.3f} ms/s for the node"
        )
        # Started in waves, each once the last answers: what is measured here is being idle, not
        # claiming together (scripts/bench-claim measures that).
        log(f"starting {m} nodes, {WAVE} at a time")
        nodes = [
            Node(a, f"{n}-{k}", f"127.3.{k // 250}.{k % 250 + 1}", self.dns_port, a.etcd_port, self.limit_for(n))
            for k in range(m)
        ]
        name, want = name_of(n), has(address_of(n))
        started = time.monotonic()
        ready = self.start_in_waves(nodes, lambda node: _answered(self.prober, name, want, node.ip, 0.2))
        ready_seconds = time.monotonic() - started
        unready = [node for node in nodes if node.process is not None and node not in ready]
        unstarted = sum(1 for node in nodes if node.process is None)
        self.out(f"  {len(ready)} of {m} answer every member {ready_seconds:.1f} s after the first was started")
        if unready:
            self.out(
                f"  {len(unready)} started but not answering are stopped"
                + (f", {unstarted} were not started" if unstarted else "")
                + "; what their logs said first (WARN or ERROR):"
            )
            for line, count in _first_complaints(unready):
                self.out(f"    {count:4d}  {line}")
            stop_all([node.process for node in unready])
        if not ready:
            self.row(
                f"{m} idle nodes: answering within {a.start_timeout:.0f} s", n, None, "", goal=None, text=f"none of {m}"
            )
            return
        k = len(ready)
        self.settle_etcd()
        log(f"{k} nodes idle, {a.window:.0f} s")
        before_cpu = [process_cpu(node.pid) for node in ready]
        window = self.idle_window(a.window)
        nodes_ms = sum(process_cpu(node.pid) - b for node, b in zip(ready, before_cpu)) / 1e6 / window.seconds / k
        base = baseline.etcd / baseline.seconds / 1e6
        with_k = window.etcd / window.seconds / 1e6
        per_node = (with_k - base) / k
        rps = sum(window.etcd_requests.values()) / window.seconds / k
        saturated = with_k > 0.8 * os.cpu_count() * 1000
        self.out(
            f"  etcd CPU                 {with_k:8.1f} ms/s ({base:.2f} alone): {per_node:.3f} ms/s per node"
            + ("; etcd is saturated, so this is a lower bound" if saturated else "")
        )
        self.out(f"  etcd's time per request  " + _handling(window))
        self.out(
            f"  requests to etcd         {rps:8.3f} /s per node (etcd's grpc_server_msg_received_total): "
            + _rates(window.etcd_requests, window.seconds * k)
        )
        self.out(f"  node CPU                 {nodes_ms:8.3f} ms/s per node, mean")
        bound = "≥ " if saturated else ""
        label = f"{k} idle nodes" + (f" (of {m})" if k < m else "")
        self.row(f"{label}: etcd CPU per node", n, per_node, "ms/s", goal=0.5, bound=bound)
        self.row(f"{label}: requests per node", n, rps, "/s", goal=0.2, bound=bound)
        self.row(f"{label}: node CPU, mean", n, nodes_ms, "ms/s", goal=0.2)
        if k < m:
            self.row(
                f"{m} idle nodes: answering within {a.start_timeout:.0f} s", n, None, "", goal=None, text=f"{k} of {m}"
            )
        log(f"stopping {k} nodes")
        stop_all([node.process for node in ready])

    def start_in_waves(self, nodes, answers):
        """Starts `nodes`, WAVE at a time, each wave once the last answers (`answers(node)`), until
        `--start-timeout`; returns those that answered. What is measured after is being idle, not
        claiming together (scripts/bench-claim measures that)."""
        started = time.monotonic()
        ready, pending = [], []
        for first in range(0, len(nodes), WAVE):
            if time.monotonic() - started > self.args.start_timeout:
                break
            wave = nodes[first : first + WAVE]
            for node in wave:
                node.start()
            pending = list(wave)
            while pending and time.monotonic() - started < self.args.start_timeout:
                pending = [node for node in pending if node.alive() and not answers(node)]
                if pending:
                    time.sleep(0.2)
            ready += [node for node in wave if node not in pending]
            if pending:
                break
        return ready

    # -- 6. the nodes spread over a three-member etcd ---------------------------------------------
    def spread(self):
        """M idle nodes whose Corefile names every member of a three-member etcd: each member's
        share of their requests (gRPC messages it received from clients) and its CPU per second,
        alone and with the nodes. All members share this machine's cores: the shares, not the
        members' capacity, are the figure."""
        a = self.args
        m = a.spread
        self.out(f"\n{m} idle nodes on a three-member etcd, their Corefile naming all three:")
        log("starting a three-member etcd")
        members = start_etcd_cluster(a.work, 3)
        clients = [Etcd(port) for port, _ in members]
        endpoints = " ".join(f"http://127.0.0.1:{port}" for port, _ in members)

        def measure(seconds):
            before = [(sum(c.requests()[0].values()), process_cpu(p.pid)) for c, (_, p) in zip(clients, members)]
            time.sleep(seconds)
            after = [(sum(c.requests()[0].values()), process_cpu(p.pid)) for c, (_, p) in zip(clients, members)]
            # The measuring requests themselves (one /metrics each) are not gRPC.
            return [((r1 - r0) / seconds, (c1 - c0) / 1e6 / seconds) for (r0, c0), (r1, c1) in zip(before, after)]

        time.sleep(2)
        log(f"the three members alone, {a.window:.0f} s")
        alone = measure(a.window)
        nodes = [
            Node(a, f"spread-{k}", f"127.5.{k // 250}.{k % 250 + 1}", self.dns_port, None, m + 10, endpoints)
            for k in range(m)
        ]
        log(f"starting {m} nodes, {WAVE} at a time")
        ready = self.start_in_waves(nodes, lambda node: self.prober.ask(node.ip, "id.server.", 0.2) is not None)
        # Held names: every node has claimed, and spread over the members by its name.
        deadline = time.monotonic() + a.start_timeout
        while time.monotonic() < deadline:
            held = json.loads(clients[0].request("POST", "/v3/kv/range", json.dumps(
                {"key": b64("worker0"), "range_end": b64("worker:"), "count_only": True}).encode()))
            if int(held.get("count", 0)) >= len(ready):
                break
            time.sleep(0.5)
        time.sleep(3)
        log(f"{len(ready)} nodes idle on three members, {a.window:.0f} s")
        loaded = measure(a.window)
        total = sum(r for r, _ in loaded) or 1
        self.out(f"  {len(ready)} of {m} nodes answering; each member's part of their requests:")
        self.out(f"    {'member':<24} {'requests':>10} {'share':>6} {'CPU alone':>10} {'CPU with nodes':>15}")
        for (port, _), (rate, cpu), (_, cpu_alone) in zip(members, loaded, alone):
            self.out(
                f"    http://127.0.0.1:{port:<7} {rate:8.1f}/s {rate / total * 100:5.1f}% "
                f"{cpu_alone:7.1f} ms/s {cpu:12.1f} ms/s"
            )
        shares = sorted(rate / total for rate, _ in loaded)
        text = " / ".join(f"{s * 100:.0f}%" for s in shares)
        self.row(f"{len(ready)} nodes on 3 etcd members: requests' shares", None, None, "", text=text)
        self.row(f"{len(ready)} nodes on 3 etcd members: largest share", None, shares[-1] * 100, "%", goal=50)
        log(f"stopping {len(ready)} nodes and the three members")
        stop_all([node.process for node in nodes if node.process is not None])
        stop_all([p for _, p in members], grace=5)

    def settle_etcd(self, longest=20.0):
        """Waits until etcd's CPU rate holds still (four seconds in a row within 15% of each other):
        nodes that started or stopped make the others read the members again, and etcd's collector
        goes on giving memory back for seconds after a load or a start."""
        deadline = time.monotonic() + longest
        rates = []
        last = process_cpu(self.etcd_pid)
        while time.monotonic() < deadline:
            time.sleep(1)
            now = process_cpu(self.etcd_pid)
            rates.append(now - last)
            last = now
            if len(rates) >= 4 and max(rates[-4:]) - min(rates[-4:]) <= 0.15 * max(rates[-4:]):
                return

    # -- 7. claims -------------------------------------------------------------------------------
    def claims(self):
        for count in self.args.claims:
            log(f"scripts/bench-claim {count}")
            script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-claim")
            result = subprocess.run([script, str(count)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            out = result.stdout
            took = re.search(r"time until all had claimed\s+([\d.]+) s", out)
            median = re.search(r"etcd requests per claim, median\s+(\d+)", out)
            top = re.search(r"etcd requests per claim, max\s+(\d+)", out)
            failed = re.search(r"only (\d+) of (\d+) nodes claimed a name in (\d+) s", out)
            distinct = re.search(r"distinct names\s+(\d+)", out)
            if took and median and top:
                # Exit 1 with every node claimed: the names were not exactly 1..count.
                right = result.returncode == 0
                names = f"{distinct.group(1) if distinct else '?'} distinct names, not exactly 1..{count}"
                self.out(
                    f"claim, {count} nodes started together: all claimed after {took.group(1)} s, requests per claim"
                    f" median {median.group(1)}, max {top.group(1)}" + ("" if right else f"; but {names}")
                )
                self.row(
                    f"claim, {count} nodes: time until all claimed",
                    None,
                    float(took.group(1)) if right else None,
                    "s",
                    goal=5.0,
                    text=None
                    if right
                    else f"{float(took.group(1)):.2f} s but {distinct.group(1) if distinct else '?'} names",
                )
                self.row(
                    f"claim, {count} nodes: requests per claim, median",
                    None,
                    float(median.group(1)),
                    "",
                    goal=3.0,
                    text=f"{median.group(1)} (max {top.group(1)})",
                )
            elif failed:
                self.out(
                    f"claim, {count} nodes started together:"
                    f" only {failed.group(1)} of {count} claimed within {failed.group(3)} s"
                )
                self.row(
                    f"claim, {count} nodes: time until all claimed",
                    None,
                    None,
                    "s",
                    goal=5.0,
                    text=f"{failed.group(1)}/{count} in {failed.group(3)} s",
                )
            else:
                self.out(f"claim, {count} nodes: scripts/bench-claim failed (exit {result.returncode}):")
                self.out("  " + "\n  ".join(out.strip().splitlines()[-5:]))
                self.row(f"claim, {count} nodes: time until all claimed", None, None, "s", goal=5.0, text="failed")

    # -- 7. the table ----------------------------------------------------------------------------
    def table(self):
        self.out("\nscale: figures against the goals of issue 12 (ratio = measured / goal; ✓ when at most the goal)")
        self.out(f"{'figure':<52} {'members':>7}  {'measured':<30} {'goal':<13} {'ratio':>7}")
        for r in self.rows:
            measured = r.text or (_fmt(r.value, r.unit) if r.value is not None else "-")
            measured = r.bound + measured
            goal = f"≤ {_fmt(r.goal, r.unit)}" if r.goal is not None else "-"
            if r.goal is None:
                ratio, mark = "", ""
            elif r.value is None:
                ratio, mark = "-", "✗"
            else:
                ratio = f"{r.value / r.goal:.2f}" if r.goal else "-"
                mark = "✓" if r.value <= r.goal else "✗"
            self.out(f"{r.figure:<52} {r.n if r.n else '':>7}  {measured:<30} {goal:<13} {ratio:>7} {mark}".rstrip())


def _answered(prober, name, want, ip=NODE_IP, timeout=1.0):
    answer = prober.ask(ip, name, timeout)
    return answer is not None and want(answer)


def _handling(window):
    """etcd's handling time per unary call, by method, and its share of the window."""
    parts = [
        f"{method} {spent / calls * 1000:.2f} ms ({spent / window.seconds * 1000:.1f} ms/s)"
        for method, (calls, spent) in sorted(window.etcd_handling.items(), key=lambda kv: -kv[1][1])
    ]
    return ", ".join(parts) or "none"


def _first_complaints(nodes):
    """The first WARN or ERROR line of each node's log, without its time stamp, most common first."""
    counts = {}
    for node in nodes:
        try:
            with open(node.log_path) as f:
                line = next((l for l in f if " WARN " in l or " ERROR " in l), "(none)")
        except FileNotFoundError:
            line = "(no log)"
        line = re.sub(r"^\[[^ ]* +(WARN|ERROR) *\] ", r"\1 ", line.strip())
        line = re.sub(r"\b[0-9a-f]{12,16}\b", "…", line)[:150]
        counts[line] = counts.get(line, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])[:4]


def _rates(counts, seconds):
    return ", ".join(f"{k} {v / seconds:.2f}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def _fmt(value, unit):
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "B":
        return f"{value:.0f} B"
    if unit in ("MB", "KB"):
        return f"{value:.1f} {unit}" if value >= 10 else f"{value:.2f} {unit}"
    if unit in ("ms", "ms/s"):
        return f"{value:.3f} {unit}" if value < 1 else f"{value:.1f} {unit}"
    if unit == "%":
        return f"{value:.0f}%"
    if unit == "/s":
        return f"{value:.2f}/s"
    return f"{value:g}"


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="scripts/bench-scale", description="idetcd at scale: etcd and node cost against N members"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="N=10000, fewer repetitions, shorter windows, 50 idle nodes, claim 256 only",
    )
    p.add_argument("--nodes", type=int, help="idle nodes to run together (default 200, 50 with --quick)")
    p.add_argument(
        "--with",
        dest="with_",
        action="append",
        default=[],
        metavar="DIRECTIVE",
        help="a line added to every node's idetcd block, e.g. 'watch' or 'poll 5s'",
    )
    p.add_argument(
        "--spread",
        type=int,
        metavar="M",
        help="idle nodes on a three-member etcd, for each member's share (default 100, 30 with --quick; 0 for none)",
    )
    p.add_argument(
        "--only-spread",
        action="store_true",
        help="measure the three-member etcd alone: no member counts, no claims",
    )
    p.add_argument(
        "--claims",
        help="node counts for scripts/bench-claim, comma-separated"
        " (default 256,512,1000; 256 with --quick; 0 for none)",
    )
    p.add_argument("members", nargs="*", type=int, metavar="N", help="member counts (default 10000 100000)")
    p.add_argument("--etcd-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--etcd-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--bin", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if any(n <= SMALL_N or n > 900000 for n in a.members):
        p.error(f"member counts are from {SMALL_N + 1} to 900000")
    if a.only_spread:
        a.members, a.claims = [], "0"
    else:
        a.members = a.members or ([10000] if a.quick else [10000, 100000])
    a.spread = a.spread if a.spread is not None else (30 if a.quick else 100)
    if not 0 <= a.spread <= 2500:
        p.error("--spread is from 0 to 2500")
    a.nodes = a.nodes if a.nodes is not None else (50 if a.quick else 200)
    if not 0 <= a.nodes <= 2500:
        p.error("--nodes is from 0 to 2500")
    claims = a.claims if a.claims is not None else ("256" if a.quick else "256,512,1000")
    try:
        a.claims = [int(c) for c in claims.split(",") if int(c) > 0]
    except ValueError:
        p.error("--claims takes counts separated by commas")
    a.repeat = 50 if a.quick else 200
    a.budget = 6.0 if a.quick else 15.0  # seconds of changes of one kind at most
    a.window = 8.0 if a.quick else 20.0  # seconds of each idle measurement
    a.settle = 1.5  # after the last change: a poll of 1s still sees it
    a.start_timeout = 30.0 if a.quick else 60.0
    return a


def main(argv):
    if argv[:1] == ["proxy"]:
        return run_proxy(int(argv[1]))
    a = parse_args(argv)
    if a.check:
        return 0
    bench = Bench(a)
    try:
        extras = "; ".join(a.with_) or "none (the defaults)"
        version = subprocess.run(["etcd", "--version"], stdout=subprocess.PIPE, text=True).stdout.split("\n")[0]
        binary = os.path.relpath(a.bin)
        print(f"scale: {binary} against etcd ({version}), {os.cpu_count()} cores, Linux {os.uname().release}")
        print(f"Corefile additions: {extras}; {a.nodes} idle nodes; idle windows of {a.window:.0f} s")
        small_rss = bench.small_memory() if a.members else 0
        for n in sorted(a.members):
            bench.stage(n, small_rss)
        if a.spread:
            bench.spread()
        if a.claims:
            print()
            bench.claims()
        bench.table()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if bench.node:
            bench.stop_node()
        stop_all(list(LIVE), grace=5)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main(sys.argv[1:]))
