#!/usr/bin/env python3
"""bundlecopy against `skopeo copy --all`, on loopback registries, in the same run.

    bench/bench.py [--runs 5] [--shapes 1,2,3,4a,4b,5,6,1x,1i,3x,3i] [--quick] [--workdir .work/bench]
                   [--bin target/release/bundlecopy] [--keep-going]
    bench/bench.py --latency 50,100,50/200 [--shapes h,3,1] [--runs 3]

With --latency the source registry is reached through bench/latency_proxy.py (a round-trip time
and optionally a bandwidth cap per setting), and the report counts requests, connections and
sequential round trips to the source (bench/README.md, "Latency mode").

Starts Debian `docker-registry` processes bound to 127.0.0.1 on free ports, publishes bundles of
the configured shapes to a source registry whose storage is kept under WORKDIR/cache (so test data
is generated once), then for every shape and run copies the bundle with both tools, alternating
which goes first. Before each copy the destination registry is restarted on empty storage,
skopeo's blob-info cache is deleted, and the page cache is settled (sync, then wait until
Dirty+Writeback in /proc/meminfo is small). Prints medians, min and max, and the ratio
ours/skopeo of wall time, CPU seconds (user+sys), peak RSS and bytes written to sockets; see
bench/README.md for the method. Standard library only.
"""
import argparse
import base64
import ctypes
import datetime
import fcntl
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PUBLISHER = REPO_ROOT / "scripts" / "publish-sample-bundle.py"
MiB = 1 << 20
GiB = 1 << 30
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_ACCEPT = ", ".join([
    OCI_INDEX, "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json"])
USER, PASSWORD = "bench", "bench-password"
SKOPEO_CACHES = [Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb"),
                 Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share")
                 / "containers/cache/blob-info-cache-v1.boltdb"]


def log(message):
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Shapes

class Shape:
    """A bundle layout and how it is copied."""

    def __init__(self, key, title, layers, layer_size, components=0, component_layers=0,
                 component_layer_size=0, seed=1, mode="fresh", tls=False):
        self.key = key
        self.title = title
        self.layers = layers
        self.layer_size = layer_size
        self.components = components
        self.component_layers = component_layers
        self.component_layer_size = component_layer_size
        self.seed = seed
        # fresh: empty destination registry per copy; repeat: destination already holds the
        # bundle; same-registry: a fresh repository of the source registry; export: from the
        # source registry into a new oci-archive file; import: from an oci-archive file (written
        # once by bundlecopy) into an empty destination registry.
        self.mode = mode
        self.tls = tls

    @property
    def repository(self):
        """Source repository; its name encodes the layout, so a cached bundle is only reused
        for the same layout."""
        return (f"bench/b{self.seed}-l{self.layers}x{self.layer_size}"
                f"-c{self.components}x{self.component_layers}x{self.component_layer_size}")

    @property
    def blob_bytes(self):
        """Layer bytes in the closure (configs and manifests are a few hundred bytes each)."""
        return (self.layers * self.layer_size
                + self.components * self.component_layers * self.component_layer_size)


def shapes_for(quick):
    big = 64 * MiB if quick else 256 * MiB
    huge = 256 * MiB if quick else GiB
    small_huge = 64 * MiB if quick else 256 * MiB
    many = 20 if quick else 50
    return [
        Shape("1", f"4 x {big // MiB} MiB layers, HTTP -> HTTP", 4, big, seed=1),
        Shape("2", f"4 x {big // MiB} MiB layers, HTTP -> HTTPS + basic auth", 4, big, seed=1, tls=True),
        Shape("3", f"{many} components x 3 x 1 MiB layers", 3, MiB, many, 3, MiB, seed=4),
        Shape("4a", f"one {huge // MiB} MiB layer", 1, huge, seed=2),
        Shape("4b", f"one {small_huge // MiB} MiB layer", 1, small_huge, seed=3),
        Shape("5", "repeat copy of shape 1 (all present at the destination)", 4, big, seed=1,
              mode="repeat"),
        Shape("6", "shape 1 into another repository of the same registry", 4, big, seed=1,
              mode="same-registry"),
        # porter-hello-like: the invocation image and two component images, 20 small layers.
        Shape("h", "porter-hello-like: 3 images, 8 x 512 KiB + 2 x 6 x 256 KiB layers", 8, 512 * 1024,
              2, 6, 256 * 1024, seed=5),
        # Air gap: shapes 1 and 3 out to an oci-archive file and back in.
        Shape("1x", f"shape 1 (4 x {big // MiB} MiB) registry -> oci-archive", 4, big, seed=1,
              mode="export"),
        Shape("1i", f"shape 1 (4 x {big // MiB} MiB) oci-archive -> registry", 4, big, seed=1,
              mode="import"),
        Shape("3x", f"shape 3 ({many} components) registry -> oci-archive", 3, MiB, many, 3, MiB,
              seed=4, mode="export"),
        Shape("3i", f"shape 3 ({many} components) oci-archive -> registry", 3, MiB, many, 3, MiB,
              seed=4, mode="import"),
    ]


# ---------------------------------------------------------------------------------------------
# Registries

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryProcess:
    """One docker-registry process bound to 127.0.0.1, with its config under `home`."""

    def __init__(self, name, home, storage, tls=None, htpasswd=None, access_log=False):
        self.name = name
        self.access_log = access_log  # one line per request in the log (latency mode counts them)
        self.home = home
        self.storage = storage
        self.tls = tls            # (certificate, key)
        self.htpasswd = htpasswd
        self.port = free_port()
        self.process = None
        self.log_file = None

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    def write_config(self):
        lines = [
            "version: 0.1",
            f"log: {{level: error, accesslog: {{disabled: {'false' if self.access_log else 'true'}}}}}",
            "storage:",
            f"  filesystem: {{rootdirectory: {self.storage}}}",
            "  delete: {enabled: true}",
            "  maintenance: {uploadpurging: {enabled: false}}",
            "http:",
            f"  addr: {self.host}",
            f"  secret: bundlecopy-bench-{self.name}",
        ]
        if self.tls:
            lines.append(f"  tls: {{certificate: {self.tls[0]}, key: {self.tls[1]}}}")
        if self.htpasswd:
            lines.append(f"auth: {{htpasswd: {{realm: bench, path: {self.htpasswd}}}}}")
        path = self.home / f"{self.name}.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self):
        self.storage.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        # REGISTRY_* variables would override the config file (for instance the listen address).
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.log_file = open(self.home / f"{self.name}.log", "ab")
        self.process = subprocess.Popen(["docker-registry", "serve", str(config)], env=env,
                                        stdin=subprocess.DEVNULL, stdout=self.log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                status = self.probe()
                if status in (200, 401):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        tail = (self.home / f"{self.name}.log").read_text(errors="replace")[-2000:]
        sys.exit(f"registry {self.name} did not start on {self.host}:\n{tail}")

    def probe(self):
        conn = self.connection(timeout=2)
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status
        finally:
            conn.close()

    def connection(self, timeout=30):
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls[2]))
            return http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=timeout)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def manifest_digest(self, repository, reference):
        conn = self.connection()
        headers = {"Accept": MANIFEST_ACCEPT}
        if self.htpasswd:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        try:
            conn.request("HEAD", f"/v2/{repository}/manifests/{reference}", headers=headers)
            response = conn.getresponse()
            response.read()
            return response.getheader("Docker-Content-Digest") if response.status == 200 else None
        finally:
            conn.close()

    def stop(self):
        if self.process:
            stop_process(self.process)
        self.process = None
        if self.log_file:
            self.log_file.close()
            self.log_file = None

    def reset(self):
        """Restart on empty storage: every copy meets a registry that has never seen a blob."""
        self.stop()
        shutil.rmtree(self.storage, ignore_errors=True)
        self.start()


def stop_process(process):
    """SIGTERM, then SIGKILL after 10 s; reaped either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_certificates(directory):
    """A throw-away CA and a leaf for localhost/127.0.0.1 (rustls refuses a CA used as the
    server certificate, so it is CA + leaf). Returns (leaf, key, ca)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    leaf, key = directory / "server.pem", directory / "server.key"
    if not (ca.exists() and leaf.exists() and key.exists()):
        def openssl(*args):
            subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
                "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=bundlecopy bench CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        csr = directory / "server.csr"
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-keyout", str(key),
                "-out", str(csr), "-subj", "/CN=localhost")
        ext = directory / "leaf.ext"
        ext.write_text("basicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
        openssl("x509", "-req", "-sha256", "-days", "3650", "-in", str(csr), "-CA", str(ca),
                "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(leaf), "-extfile", str(ext))
    cert_dir = directory / "certs.d"          # skopeo --dest-cert-dir wants DIR/ca.crt
    cert_dir.mkdir(exist_ok=True)
    shutil.copyfile(ca, cert_dir / "ca.crt")
    return leaf, key, ca


def make_htpasswd(path):
    """bcrypt htpasswd (the registry accepts only bcrypt): apache2-utils' htpasswd, else
    libxcrypt through Python's crypt module (removed in Python 3.13)."""
    if path.exists():
        return
    if shutil.which("htpasswd"):
        line = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True,
                              capture_output=True, text=True).stdout.strip()
    else:
        try:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt
            line = f"{USER}:{crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH))}"
        except ImportError:
            sys.exit("need `htpasswd` for the basic-auth registry: apt-get install -y apache2-utils")
    path.write_text(line + "\n")


# ---------------------------------------------------------------------------------------------
# Measurement

def settle(max_dirty_kib, timeout):
    """sync, then wait until little dirty or writeback page cache is left, so one run's writes
    are not flushed during the next run."""
    os.sync()
    deadline = time.monotonic() + timeout
    while True:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                info[key] = int(value.split()[0])
        pending = info.get("Dirty", 0) + info.get("Writeback", 0)
        if pending <= max_dirty_kib:
            return
        if time.monotonic() > deadline:
            log(f"    (page cache did not settle: {pending // 1024} MiB dirty after {timeout} s; going on)")
            return
        time.sleep(0.1)
        os.sync()


def remove_skopeo_caches():
    for path in SKOPEO_CACHES:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def read_proc_io(pid):
    values = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            key, value = line.split(":")
            values[key] = int(value)
    return values


def cpu_seconds(pid):
    """user+sys CPU seconds of a running process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain(stream, sink):
    total = 0
    chunks = []
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        total += len(chunk)
        if sum(len(c) for c in chunks) < 1 << 20:
            chunks.append(chunk)
    sink["bytes"] = total
    sink["text"] = b"".join(chunks).decode(errors="replace")


def become_subreaper():
    """Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER), so a tool started by a shell that
    exits at once becomes our child and we can wait4 it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")


def spawn_small(command, stdout, stderr):
    """Start `command` as a fork of /bin/sh rather than of this Python process; return its pid
    and a function that lets it run.

    Linux carries the peak RSS of the address space a process replaces at exec into its
    ru_maxrss. A child of Python (vfork or fork) would therefore report at least Python's own
    peak (about 25 MiB) whatever the tool uses. So sh forks a subshell (from sh's 1 MiB address
    space) that waits for a go byte, prints its pid and exits; as a subreaper we adopt the
    subshell, then send the go byte and it execs the tool. (Waiting for the go byte also keeps
    sh from reaping a tool that exits at once.)"""
    pid_read, pid_write = os.pipe()
    go_read, go_write = os.pipe()
    # Above 9, so the dup2 onto 8 and 9 in the child cannot overwrite one another.
    high_pid_write = fcntl.fcntl(pid_write, fcntl.F_DUPFD_CLOEXEC, 10)
    high_go_read = fcntl.fcntl(go_read, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(pid_write)
    os.close(go_read)

    def wire_fds():
        os.dup2(high_pid_write, 9)
        os.dup2(high_go_read, 8)

    shell = subprocess.Popen(
        ["/bin/sh", "-c", '{ read _ <&8; exec 8<&- 9>&-; exec "$@"; } & echo $! >&9', "sh", *command],
        stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, close_fds=True,
        pass_fds=(8, 9), preexec_fn=wire_fds)
    os.close(high_pid_write)
    os.close(high_go_read)
    with os.fdopen(pid_read) as f:
        pid = int(f.readline().strip())  # the subshell keeps its copy open until it execs
    shell.wait()  # once sh is gone the waiting subshell is ours

    def go():
        os.write(go_write, b"\n")
        os.close(go_write)
    return pid, go


def measure(command):
    """Run `command` and return wall time, CPU seconds, peak RSS and bytes written to sockets.

    stdout and stderr are pipes that we read and count. When the process has exited it is left
    unreaped (waitid WNOWAIT) so /proc/PID/io can still be read: wchar counts every byte passed
    to write/writev/sendfile (sockets, pipes and files), so socket bytes are wchar minus what
    reached our pipes minus write_bytes (what it wrote to files). Then wait4 reaps it and gives
    the rusage (user+sys CPU, ru_maxrss)."""
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    out, err = {}, {}
    readers = [threading.Thread(target=drain, args=(os.fdopen(out_read, "rb"), out)),
               threading.Thread(target=drain, args=(os.fdopen(err_read, "rb"), err))]
    for reader in readers:
        reader.start()
    pid, go = spawn_small(command, out_write, err_write)
    os.close(out_write)
    os.close(err_write)
    started = time.perf_counter()
    go()
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    wall = time.perf_counter() - started
    io = read_proc_io(pid)
    _, status, usage = os.wait4(pid, 0)
    for reader in readers:
        reader.join()
    socket_bytes = io["wchar"] - out["bytes"] - err["bytes"] - io["write_bytes"]
    return {
        "exit": os.waitstatus_to_exitcode(status),
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mib": usage.ru_maxrss / 1024,
        "sent_mib": max(socket_bytes, 0) / MiB,
        "file_write_bytes": io["write_bytes"],
        "stdout": out["text"],
        "stderr": err["text"],
    }


# ---------------------------------------------------------------------------------------------
# Latency mode: the source behind bench/latency_proxy.py

PROXY = Path(__file__).resolve().parent / "latency_proxy.py"
ACCESS_LOG_METHODS = (b'"GET ', b'"HEAD ', b'"POST ', b'"PUT ', b'"PATCH ', b'"DELETE ')


class Network:
    """A network setting between the tools and the source registry: `RTT` or `RTT/MBIT`."""

    def __init__(self, text):
        rtt, _, rate = text.partition("/")
        self.rtt_ms = float(rtt)
        self.rate_mbit = float(rate) if rate else 0.0
        self.label = f"{self.rtt_ms:g} ms" + (f", {self.rate_mbit:g} Mbit/s" if self.rate_mbit else "")
        self.key = text


class LatencyProxy:
    """bench/latency_proxy.py in front of a registry, as a process of its own (its CPU is neither
    ours nor the tools')."""

    def __init__(self, home, upstream, network):
        self.events = home / f"proxy-{network.key.replace('/', '-')}.jsonl"
        self.events.write_text("")
        command = [sys.executable, str(PROXY), "--upstream", upstream.host,
                   "--rtt-ms", str(network.rtt_ms), "--events", str(self.events)]
        if network.rate_mbit:
            command += ["--rate-mbit", str(network.rate_mbit)]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=open(home / "proxy.log", "ab"), start_new_session=True)
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("listening on "):
            self.stop()
            sys.exit(f"latency proxy did not start: {line!r}; see {home / 'proxy.log'}")
        self.host = line.split()[-1]

    def offset(self):
        return self.events.stat().st_size

    def read_events(self, offset, timeout=5.0):
        """The events logged since `offset`, once every connection opened since then has been
        closed (the proxy logs a close after passing on the end of both directions)."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.events, "rb") as f:
                f.seek(offset)
                events = [json.loads(line) for line in f.read().splitlines() if line.strip()]
            opened = sum(1 for e in events if e["e"] == "open")
            closed = sum(1 for e in events if e["e"] == "close")
            if opened == closed or time.monotonic() > deadline:
                return events
            time.sleep(0.05)

    def stop(self):
        stop_process(self.process)


def source_traffic(events):
    """Requests, connections and sequential round trips seen by the latency proxy.

    Round trips on the critical path: the longest chain of exchanges with the source in which
    each one began only after the previous one's answer had begun to arrive. An exchange is a
    request (from when it was sent, counting a fresh connection as usable one RTT after it was
    accepted, until the first byte of its response was delivered), a connection set-up (from
    accept to accept + RTT) or a TLS ClientHello sent to the plain-HTTP source (skopeo probes
    HTTPS first; until the source answers). Each link of such a chain costs at least one RTT, so
    wall time >= chain x RTT."""
    requests = {}
    exchanges = []
    connections = 0
    for e in events:
        if e["e"] == "open":
            connections += 1
            exchanges.append((e["t"], e["ready"]))
        elif e["e"] == "req":
            requests[e["r"]] = e
        elif e["e"] == "resp" and e["r"] in requests:
            exchanges.append((requests[e["r"]]["t"], e["t"]))
    exchanges.sort()
    # Longest chain in an interval order: best[i] = 1 + max(best[j] for j ending by i's start).
    best = []
    for i, (start, _) in enumerate(exchanges):
        best.append(1 + max((best[j] for j in range(i) if exchanges[j][1] <= start), default=0))
    probes = sum(1 for r in requests.values() if r["m"] == "TLS-PROBE")
    return {"source_requests": len(requests) - probes, "source_connections": connections,
            "source_tls_probes": probes, "source_round_trips": max(best, default=0)}


def archive_digest(path, tag):
    """The digest an oci-archive's index.json gives `tag` (standard library tarfile)."""
    import tarfile
    with tarfile.open(path) as archive:
        member = next(m for m in archive.getmembers() if m.name.lstrip("./") == "index.json")
        index = json.load(archive.extractfile(member))
    for entry in index.get("manifests", []):
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return entry["digest"]
    return None


def access_log_requests(path, offset):
    """Requests in a registry's access log (Apache combined format) after `offset`."""
    with open(path, "rb") as f:
        f.seek(offset)
        return sum(1 for line in f.read().splitlines()
                   if any(method in line for method in ACCESS_LOG_METHODS))


# ---------------------------------------------------------------------------------------------
# The benchmark

class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.workdir).resolve()
        self.cache = self.work / "cache"
        self.home = self.work / "run"
        by_key = {s.key: s for s in shapes_for(args.quick)}
        self.shapes = [by_key[key] for key in args.shapes if key in by_key]
        self.registries = []
        self.results = {}
        self.proxy = None      # latency mode: the proxy in front of the source, per network

    def setup(self):
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        leaf, key, ca = make_certificates(self.cache / "certs")
        self.ca = ca
        self.cert_dir = self.cache / "certs" / "certs.d"
        make_htpasswd(self.cache / "htpasswd")
        # The source keeps its storage in the cache: published bundles survive between runs.
        self.source = RegistryProcess("source", self.home, self.cache / "source-registry")
        self.plain = RegistryProcess("dest-http", self.home, self.home / "dest-http",
                                     access_log=bool(self.args.latency))
        self.secure = RegistryProcess("dest-tls-auth", self.home, self.home / "dest-tls-auth",
                                      tls=(leaf, key, ca), htpasswd=self.cache / "htpasswd",
                                      access_log=bool(self.args.latency))
        self.registries = [self.source, self.plain, self.secure]
        for registry in self.registries:
            registry.start()
        # Docker config for our tool: credentials for the TLS registry only.
        self.docker_config = self.home / "docker-config"
        self.docker_config.mkdir()
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (self.docker_config / "config.json").write_text(
            json.dumps({"auths": {self.secure.host: {"auth": auth}}}))
        self.empty_docker_config = self.home / "no-docker-config"
        self.empty_docker_config.mkdir()
        log(f"registries: source {self.source.host}, destination {self.plain.host} (HTTP), "
            f"{self.secure.host} (HTTPS + basic auth); logs in {self.home}")

    def teardown(self):
        for registry in self.registries:
            registry.stop()

    def publish(self, shape):
        digest = self.source.manifest_digest(shape.repository, "v1")
        if digest:
            return digest
        log(f"  publishing {shape.repository}:v1 ({shape.blob_bytes / MiB:.0f} MiB of layers; "
            "generated once, kept in the cache)")
        command = [sys.executable, str(PUBLISHER), f"http://{self.source.host}", shape.repository, "v1",
                   "--layers", str(shape.layers), "--layer-size", str(shape.layer_size),
                   "--components", str(shape.components), "--seed", str(shape.seed)]
        if shape.components:
            command += ["--component-layers", str(shape.component_layers),
                        "--component-layer-size", str(shape.component_layer_size)]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()

    def archive(self, shape, tool):
        """The archive file a shape's export writes, or its import reads (`prepared`)."""
        return self.home / "archives" / f"{shape.key}-{tool}.tar"

    def commands(self, shape, destination_registry, destination_repository):
        source_host = self.proxy.host if self.proxy else self.source.host
        source = f"{source_host}/{shape.repository}:v1"
        destination = f"{destination_registry.host}/{destination_repository}:v1"
        # Each tool's source and destination: registries, or an archive for the air-gap shapes.
        ends = {tool: (source, destination) for tool in ("ours", "skopeo")}
        if shape.mode == "export":
            ends = {tool: (source, f"oci-archive:{self.archive(shape, tool)}:v1") for tool in ends}
        elif shape.mode == "import":
            prepared = f"oci-archive:{self.archive(shape, 'prepared')}:v1"
            ends = {tool: (prepared, destination) for tool in ends}
        skopeo_name = lambda name: name if name.startswith("oci-archive:") else f"docker://{name}"
        ours = [*self.args.wrap_ours, str(self.args.bin), "copy", "--source", ends["ours"][0],
                "--destination", ends["ours"][1]]
        skopeo = ["skopeo", "--insecure-policy", "copy", "--all", "--preserve-digests", "--quiet",
                  "--src-tls-verify=false", *map(skopeo_name, ends["skopeo"])]
        if destination_registry is self.secure:
            ours += ["--destination-ca-file", str(self.ca), "--docker-config", str(self.docker_config)]
            skopeo += ["--dest-cert-dir", str(self.cert_dir), "--dest-creds", f"{USER}:{PASSWORD}"]
        else:
            ours += ["--docker-config", str(self.empty_docker_config)]
            skopeo += ["--dest-tls-verify=false"]
        return {"ours": ours, "skopeo": skopeo}

    def run_one(self, tool, command, destination_registry, destination_repository, expected,
                mode="fresh", archive=None):
        """One copy, measured. `archive`: the file an export writes (checked instead of the
        destination registry)."""
        settle(self.args.max_dirty_mib * 1024, self.args.settle_timeout)
        received_before = read_proc_io(destination_registry.process.pid)["rchar"]
        served_before = read_proc_io(self.source.process.pid)["wchar"]
        registries_before = [cpu_seconds(r.process.pid) for r in (self.source, destination_registry)]
        if self.proxy:
            events_offset = self.proxy.offset()
            access_offset = (self.home / f"{destination_registry.name}.log").stat().st_size
        result = measure(command)
        if self.proxy:
            result.update(source_traffic(self.proxy.read_events(events_offset)))
            result["destination_requests"] = access_log_requests(
                self.home / f"{destination_registry.name}.log", access_offset)
        received = read_proc_io(destination_registry.process.pid)["rchar"] - received_before
        source_cpu, destination_cpu = [cpu_seconds(r.process.pid) - before for r, before in
                                       zip((self.source, destination_registry), registries_before)]
        # The registries' CPU during the copy: on a small machine the copy is CPU-bound, and
        # the destination registry's share is the same whichever tool uploads.
        result["source_registry_cpu_s"] = source_cpu
        result["destination_registry_cpu_s"] = destination_cpu if destination_registry is not self.source else 0.0
        result["received_mib"] = received / MiB
        # What the tool downloaded: the source registry's writes (to sockets; it writes no files
        # while serving). Not when the source is also the destination (it stores uploads too).
        served = read_proc_io(self.source.process.pid)["wchar"] - served_before
        result["downloaded_mib"] = served / MiB if destination_registry is not self.source else None
        # What the tool uploaded: counted where it arrives, the destination registry's reads
        # (its socket reads; it does not read back what it stores). When the destination is also
        # the source, that registry's reads include the blobs it serves with sendfile, so the
        # tool's own socket writes are used instead.
        same_registry = destination_registry is self.source
        result["uploaded_mib"] = result["sent_mib"] if same_registry else result["received_mib"]
        # An export's destination is a file: what the tool wrote to disk (skopeo stages the layout
        # in a temporary directory, then writes the tar).
        result["written_mib"] = result["file_write_bytes"] / MiB if archive else None
        if archive:
            result["uploaded_mib"] = result["destination_registry_cpu_s"] = None
        if mode == "import":
            result["downloaded_mib"] = result["source_registry_cpu_s"] = None
        if result["exit"] != 0:
            raise RuntimeError(f"{tool} failed (exit {result['exit']}): {' '.join(command)}\n"
                               f"{result['stderr'][-3000:]}")
        if archive:
            copied = archive_digest(archive, "v1")
            where = str(archive)
        else:
            copied = destination_registry.manifest_digest(destination_repository, "v1")
            where = "the destination"
        if copied != expected:
            raise RuntimeError(f"{tool}: {where} holds {copied}, the source {expected}")
        return result

    def blobs_of(self, shape):
        """Every blob of the shape's bundle (digest, size), read from the source directly."""
        def get(conn, path):
            conn.request("GET", path, headers={"Accept": MANIFEST_ACCEPT})
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status}")
            return json.loads(body)
        conn = self.source.connection()
        try:
            pending, seen, blobs = ["v1"], set(), {}
            while pending:
                manifest = get(conn, f"/v2/{shape.repository}/manifests/{pending.pop()}")
                for child in manifest.get("manifests") or []:
                    if child["digest"] not in seen:
                        seen.add(child["digest"])
                        pending.append(child["digest"])
                if manifest.get("config"):
                    for blob in [manifest["config"], *(manifest.get("layers") or [])]:
                        blobs[blob["digest"]] = blob["size"]
            return sorted(blobs.items(), key=lambda item: -item[1])
        finally:
            conn.close()

    def link_floor(self, shape, concurrency=8):
        """Seconds to fetch every blob of the bundle through the latency proxy, `concurrency` at
        once, largest first, and nothing else: what the emulated link itself allows."""
        queue = list(self.blobs_of(shape))
        lock = threading.Lock()
        failures = []
        host, port = self.proxy.host.rsplit(":", 1)

        def fetch():
            conn = http.client.HTTPConnection(host, int(port), timeout=120)
            try:
                while True:
                    with lock:
                        if not queue:
                            return
                        digest, size = queue.pop(0)
                    conn.request("GET", f"/v2/{shape.repository}/blobs/{digest}")
                    response = conn.getresponse()
                    received = 0
                    while chunk := response.read(1 << 20):
                        received += len(chunk)
                    if response.status != 200 or received != size:
                        failures.append(f"{digest}: {response.status}, {received} of {size} bytes")
                        return
            finally:
                conn.close()

        threads = [threading.Thread(target=fetch) for _ in range(min(concurrency, len(queue)))]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise RuntimeError(f"link floor: {failures[0]}")
        return time.perf_counter() - started

    def run_shape(self, shape, network=None):
        log(f"shape {shape.key}: {shape.title}" + (f" (source at {network.label})" if network else ""))
        expected = self.publish(shape)
        destination_registry = self.secure if shape.tls else self.plain
        samples = {"ours": [], "skopeo": []}
        floor = []
        if shape.mode == "repeat":
            destination_registry.reset()
            command = self.commands(shape, destination_registry, shape.repository)["ours"]
            self.run_one("ours (preparing the destination)", command, destination_registry,
                         shape.repository, expected)
        if shape.mode in ("export", "import"):
            (self.home / "archives").mkdir(exist_ok=True)
        if shape.mode == "import":
            # Both tools import the same archive, written here by bundlecopy (skopeo reading it
            # is part of the interoperability the tests check).
            prepared = self.archive(shape, "prepared")
            prepared.unlink(missing_ok=True)
            subprocess.run([str(self.args.bin), "copy", "--source",
                            f"{self.source.host}/{shape.repository}:v1", "--destination",
                            f"oci-archive:{prepared}:v1"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        for run in range(self.args.runs):
            order = ["ours", "skopeo"] if run % 2 == 0 else ["skopeo", "ours"]
            for tool in order:
                if shape.mode == "same-registry":
                    # The source registry cannot be emptied (it holds the source bundle), so each
                    # copy gets a repository that has never existed.
                    registry = self.source
                    repository = f"bench/same-registry/{tool}-{run}-{time.time_ns()}"
                else:
                    registry = destination_registry
                    repository = shape.repository
                if shape.mode in ("fresh", "import"):
                    registry.reset()
                archive = None
                if shape.mode == "export":
                    archive = self.archive(shape, tool)
                    archive.unlink(missing_ok=True)
                remove_skopeo_caches()
                command = self.commands(shape, registry, repository)[tool]
                result = self.run_one(tool, command, registry, repository, expected, shape.mode,
                                      archive)
                if archive:
                    archive.unlink(missing_ok=True)
                samples[tool].append(result)
                moved = (f"{result['written_mib']:8.1f} MiB written to disk" if archive else
                         f"{result['uploaded_mib']:8.1f} MiB uploaded")
                log(f"  run {run + 1} {tool:6}: {result['wall_s']:6.2f} s wall, {result['cpu_s']:5.2f} s CPU, "
                    f"{result['rss_mib']:6.1f} MiB RSS, {moved}"
                    + (f", {result['source_requests']} source requests on {result['source_connections']} "
                       f"connections, {result['source_round_trips']} round trips, "
                       f"{result['destination_requests']} destination requests" if network else ""))
                if tool == "ours" and self.args.verbose:
                    log("    " + result["stderr"].strip().splitlines()[-1])
            if network and network.rate_mbit:
                settle(self.args.max_dirty_mib * 1024, self.args.settle_timeout)
                floor.append(self.link_floor(shape))
                log(f"  run {run + 1} link floor: {floor[-1]:6.2f} s to fetch every blob through the proxy")
        if shape.mode == "same-registry":
            shutil.rmtree(self.source.storage / "docker/registry/v2/repositories/bench/same-registry",
                          ignore_errors=True)
        if shape.mode == "import":
            self.archive(shape, "prepared").unlink(missing_ok=True)
        key = f"{shape.key}@{network.key}" if network else shape.key
        self.results[key] = {"shape": shape, "network": network, "samples": samples, "floor": floor}

    def run(self):
        self.setup()
        try:
            for network in self.args.latency or [None]:
                if network:
                    self.proxy = LatencyProxy(self.home, self.source, network)
                    log(f"network: source behind {self.proxy.host}, {network.label}")
                try:
                    for shape in self.shapes:
                        try:
                            self.run_shape(shape, network)
                        except RuntimeError as e:
                            if not self.args.keep_going:
                                raise
                            log(f"shape {shape.key} failed: {e}")
                finally:
                    if self.proxy:
                        self.proxy.stop()
                        self.proxy = None
        finally:
            self.teardown()


# ---------------------------------------------------------------------------------------------
# Report

METRICS = [("wall_s", "wall time (s)", "{:.2f}"), ("cpu_s", "CPU user+sys (s)", "{:.2f}"),
           ("rss_mib", "peak RSS (MiB)", "{:.1f}"), ("uploaded_mib", "uploaded (MiB)", "{:.1f}"),
           ("written_mib", "written to disk (MiB)", "{:.1f}"),
           ("downloaded_mib", "downloaded (MiB)", "{:.1f}"),
           ("destination_registry_cpu_s", "destination registry CPU (s)", "{:.2f}"),
           ("source_registry_cpu_s", "source registry CPU (s)", "{:.2f}")]


LATENCY_METRICS = [("wall_s", "wall time (s)", "{:.2f}"),
                   ("source_round_trips", "round trips to the source on the critical path", "{:.0f}"),
                   ("source_requests", "requests to the source", "{:.0f}"),
                   ("source_connections", "connections to the source", "{:.0f}"),
                   ("source_tls_probes", "TLS probes of the plain-HTTP source", "{:.0f}"),
                   ("destination_requests", "requests to the destination", "{:.0f}"),
                   ("cpu_s", "CPU user+sys (s)", "{:.2f}"),
                   ("rss_mib", "peak RSS (MiB)", "{:.1f}")]


def summary(values):
    return statistics.median(values), min(values), max(values)


def report(bench):
    if bench.args.latency:
        return report_latency(bench)
    lines = []
    lines.append(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
                 f"Machine: {machine()}. Runs per tool and shape: {bench.args.runs}"
                 f"{' (quick shapes)' if bench.args.quick else ''}.")
    lines.append("")
    lines.append("| shape | metric | bundlecopy median (min–max) | skopeo median (min–max) | ratio |")
    lines.append("|---|---|---|---|---|")
    for key, entry in bench.results.items():
        shape, samples = entry["shape"], entry["samples"]
        for metric, label, fmt in METRICS:
            if any(s[metric] is None for s in samples["ours"] + samples["skopeo"]):
                continue
            ours = summary([s[metric] for s in samples["ours"]])
            theirs = summary([s[metric] for s in samples["skopeo"]])
            ratio = f"{ours[0] / theirs[0]:.2f}" if theirs[0] > 0.05 else "–"
            cell = lambda v: f"{fmt.format(v[0])} ({fmt.format(v[1])}–{fmt.format(v[2])})"
            lines.append(f"| {key}: {shape.title} | {label} | {cell(ours)} | {cell(theirs)} | {ratio} |")
    lines.append("")
    lines.extend(targets(bench))
    return "\n".join(lines)


def report_latency(bench):
    lines = [f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
             f"Machine: {machine()}. Runs per tool, shape and network: {bench.args.runs}"
             f"{' (quick shapes)' if bench.args.quick else ''}. Source behind bench/latency_proxy.py.",
             "",
             "| shape | network | metric | bundlecopy median (min–max) | skopeo median (min–max) | ratio |",
             "|---|---|---|---|---|---|"]
    for entry in bench.results.values():
        shape, network, samples = entry["shape"], entry["network"], entry["samples"]
        for metric, label, fmt in LATENCY_METRICS:
            ours = summary([s[metric] for s in samples["ours"]])
            theirs = summary([s[metric] for s in samples["skopeo"]])
            ratio = f"{ours[0] / theirs[0]:.2f}" if theirs[0] > 0 and ours[0] > 0 else "–"
            cell = lambda v: (f"{fmt.format(v[0])} ({fmt.format(v[1])}–{fmt.format(v[2])})"
                              if v[1] != v[2] else fmt.format(v[0]))
            lines.append(f"| {shape.key}: {shape.title} | {network.label} | {label} | {cell(ours)} | "
                         f"{cell(theirs)} | {ratio} |")
    floors = [entry for entry in bench.results.values() if entry["floor"]]
    if floors:
        lines.append("")
        lines.append("Link floor: every blob of the bundle fetched through the proxy, 8 at once, largest "
                     "first, nothing else (once per run, after both tools):")
    for entry in floors:
        floor = summary(entry["floor"])
        ours = statistics.median(s["wall_s"] for s in entry["samples"]["ours"])
        theirs = statistics.median(s["wall_s"] for s in entry["samples"]["skopeo"])
        lines.append(f"- shape {entry['shape'].key} at {entry['network'].label}: {floor[0]:.2f} s "
                     f"({floor[1]:.2f}–{floor[2]:.2f}); bundlecopy's median {ours - floor[0]:+.2f} s above "
                     f"it, skopeo's {theirs - floor[0]:+.2f} s; the best any copier through this link "
                     f"could reach is about {floor[0] / theirs:.2f} × skopeo's median")
    lines.append("")
    lines.append("Targets (issue 15; wall-time ratios of the medians):")
    for key, network_key, limit in (("h", "50", 0.4), ("3", "50", 0.4), ("1", "50/200", 0.8)):
        entry = bench.results.get(f"{key}@{network_key}")
        if entry:
            ours = statistics.median(s["wall_s"] for s in entry["samples"]["ours"])
            theirs = statistics.median(s["wall_s"] for s in entry["samples"]["skopeo"])
            ratio = ours / theirs
            lines.append(f"- [{'x' if ratio <= limit else ' '}] shape {key} at {entry['network'].label}: "
                         f"wall time ≤ {limit} × skopeo's: {ratio:.2f}")
    return "\n".join(lines)


def machine():
    cpu = "unknown CPU"
    flags = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and cpu == "unknown CPU":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    sha = "SHA-NI" if " sha_ni" in flags else "no SHA-NI"
    return f"{os.cpu_count()} CPUs ({cpu}, {sha}), {memory:.0f} GiB RAM, {platform.system()} {platform.release()}"


def targets(bench):
    results = bench.results
    out = ["Targets:"]

    def median(key, tool, metric):
        return statistics.median(s[metric] for s in results[key]["samples"][tool])

    def check(ok, text):
        out.append(f"- [{'x' if ok else ' '}] {text}")

    if "1" in results:
        r = median("1", "ours", "wall_s") / median("1", "skopeo", "wall_s")
        check(r <= 0.75, f"shape 1 wall time ≤ 0.75 × skopeo's: {r:.2f}")
    if "3" in results:
        r = median("3", "ours", "wall_s") / median("3", "skopeo", "wall_s")
        check(r <= 0.5, f"shape 3 wall time ≤ 0.5 × skopeo's: {r:.2f}")
    for key in ("4a", "4b"):
        if key in results:
            peak = max(s["rss_mib"] for s in results[key]["samples"]["ours"])
            check(peak <= 64, f"shape {key} ({results[key]['shape'].title}) peak RSS ≤ 64 MiB: "
                              f"{peak:.1f} MiB (highest of the runs)")
    if "5" in results:
        wall = median("5", "ours", "wall_s")
        up = max(s["uploaded_mib"] for s in results["5"]["samples"]["ours"])
        down = max(s["downloaded_mib"] for s in results["5"]["samples"]["ours"])
        check(wall <= 0.2 and up + down < 1,
              f"shape 5 ≤ 0.2 s and no blob bytes moved: {wall:.3f} s; at most {up * 1024:.1f} KiB "
              f"received by the destination, {down * 1024:.1f} KiB sent by the source (HTTP headers)")
    if "6" in results:
        up = max(s["uploaded_mib"] for s in results["6"]["samples"]["ours"])
        check(up < 1, f"shape 6 no blob bytes uploaded (all mounted): {up * 1024:.1f} KiB written to sockets")
    for key in ("1x", "1i", "3x", "3i"):
        if key in results:
            r = median(key, "ours", "wall_s") / median(key, "skopeo", "wall_s")
            peak = max(s["rss_mib"] for s in results[key]["samples"]["ours"])
            check(r <= 1 and peak <= 64,
                  f"shape {key} ({results[key]['shape'].title}): wall time ≤ skopeo's and peak RSS ≤ "
                  f"64 MiB: {r:.2f}, {peak:.1f} MiB")
    for key in ("1", "2", "4a", "4b"):
        if key in results:
            gib = results[key]["shape"].blob_bytes / GiB
            ours = median(key, "ours", "cpu_s") / gib
            theirs = median(key, "skopeo", "cpu_s") / gib
            check(ours <= theirs, f"CPU s per GiB ≤ skopeo's, shape {key}: {ours:.2f} vs {theirs:.2f}")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help="copies per tool and shape (default 5, --quick 3)")
    parser.add_argument("--shapes",
                        help="comma-separated shapes: 1 2 3 4a 4b 5 6 h 1x 1i 3x 3i (see bench/README.md); "
                             "default 1,2,3,4a,4b,5,6,1x,1i,3x,3i, with --latency h,3,1")
    parser.add_argument("--latency", metavar="SETTINGS",
                        help="put the source behind bench/latency_proxy.py, once per comma-separated "
                             "setting RTT_MS or RTT_MS/MBIT, e.g. 50,100,50/200 (fresh-destination "
                             "shapes only); counts requests and round trips")
    parser.add_argument("--quick", action="store_true",
                        help="smaller shapes (64 MiB layers, 256 MiB big layer, 20 components), 3 runs")
    parser.add_argument("--workdir", default=str(REPO_ROOT / ".work" / "bench"),
                        help="registries, logs and the test-data cache (default .work/bench)")
    parser.add_argument("--bin", default=str(Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
                                             / "release" / "bundlecopy"))
    parser.add_argument("--max-dirty-mib", type=int, default=32,
                        help="wait before each copy until Dirty+Writeback is below this")
    parser.add_argument("--settle-timeout", type=float, default=60)
    parser.add_argument("--wrap-ours", default="", metavar="COMMAND",
                        help="prefix for bundlecopy's command line, for experiments and profiles, e.g. "
                             "'perf record -g -o /tmp/perf.data' or 'env TOKIO_WORKER_THREADS=1' "
                             "(a wrapper's own CPU and RSS are measured too)")
    parser.add_argument("--keep-going", action="store_true", help="report the other shapes when one fails")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    args.latency = [Network(s.strip()) for s in (args.latency or "").split(",") if s.strip()]
    default_shapes = "h,3,1" if args.latency else "1,2,3,4a,4b,5,6,1x,1i,3x,3i"
    args.shapes = [s.strip() for s in (args.shapes or default_shapes).split(",") if s.strip()]
    if args.latency and any(s not in ("1", "2", "3", "4a", "4b", "h") for s in args.shapes):
        sys.exit("--latency runs fresh-destination shapes only (1 2 3 4a 4b h)")
    args.wrap_ours = shlex.split(args.wrap_ours)
    args.runs = args.runs or (3 if args.quick else 5)
    for tool in ("docker-registry", "skopeo", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"missing {tool}: run bench/run.sh, or apt-get install -y docker-registry skopeo openssl")
    if not Path(args.bin).exists():
        sys.exit(f"missing {args.bin}: cargo build --release")

    become_subreaper()
    bench = Bench(args)
    # Stop the registries on Ctrl-C and SIGTERM too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    bench.run()
    text = report(bench)
    print(text)
    results_dir = bench.work / "results"
    results_dir.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (results_dir / f"{stamp}.md").write_text(text + "\n")
    raw = {key: {**{tool: [{k: v for k, v in s.items() if k not in ("stdout", "stderr")} for s in samples]
                    for tool, samples in entry["samples"].items()},
                 **({"link_floor_s": entry["floor"]} if entry.get("floor") else {})}
           for key, entry in bench.results.items()}
    (results_dir / f"{stamp}.json").write_text(json.dumps(raw, indent=1))
    log(f"results: {results_dir / stamp}.md and .json")


if __name__ == "__main__":
    main()
