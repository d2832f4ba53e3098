#!/usr/bin/env python3
"""A complete provider plugin in Python: the `peerpod.provider.v1` gRPC
protocol served on a unix socket with grpcio, for the adaptor's `plugin`
provider (`cloud-api-adaptor plugin --socket ...`).

Each instance is what a pod VM runs, as local processes: the user-data step
(`process-user-data`) turns the adaptor's cloud-config into the forwarder's
config, then the kata-agent (the `kata-agent-double` test agent by default)
and `agent-protocol-forwarder` start, the forwarder listening with mutual
TLS on its own loopback address (127.X.Y.n) at the adaptor's forwarder
port. The adaptor reaches it there exactly as it reaches a cloud VM.

Instances are recorded in <state-dir>/<id>/instance.json before anything is
started, so a restarted plugin still lists and deletes them; a create that
fails removes what it started. Errors go back typed (kind, code, message),
never as a gRPC status.

The Python code for the protocol is generated at start-up from the same
provider.proto the adaptor is built from (grpcio-tools), so the two cannot
drift apart.

Needs: python3 -m pip install grpcio grpcio-tools
"""

import argparse
import concurrent.futures
import json
import logging
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_PROTO_DIR = HERE.parents[3] / "libs" / "protocols" / "protos"
PROTOCOL_VERSION = 1
STOP_GRACE = 2.0

log = logging.getLogger("python-plugin")


def load_protocol(proto_dir):
    """Generates and imports provider_pb2 / provider_pb2_grpc."""
    from grpc_tools import protoc  # grpcio-tools

    out = tempfile.mkdtemp(prefix="peerpod-plugin-py-")
    rc = protoc.main([
        "protoc",
        f"-I{proto_dir}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(pathlib.Path(proto_dir) / "provider.proto"),
    ])
    if rc != 0:
        raise SystemExit(f"generating code from {proto_dir}/provider.proto failed (protoc exit {rc})")
    sys.path.insert(0, out)
    import provider_pb2
    import provider_pb2_grpc
    return provider_pb2, provider_pb2_grpc


class Failure(Exception):
    """A provider error: kind (ErrorKind name), code, message."""

    def __init__(self, kind, message, code=None):
        super().__init__(message)
        self.kind, self.message, self.code = kind, message, code


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def stop(pids):
    """SIGTERM, then SIGKILL after a grace period; reaps our children."""
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    until = time.monotonic() + STOP_GRACE
    while time.monotonic() < until and any(alive(p) for p in pids):
        reap()
        time.sleep(0.02)
    for pid in pids:
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    time.sleep(0.02)
    reap()


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class Instances:
    """The instance records on disk and the processes they name."""

    def __init__(self, args):
        self.args = args
        self.dir = pathlib.Path(args.state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def records(self):
        out = []
        for p in sorted(self.dir.glob("*/instance.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def save(self, rec):
        d = self.dir / rec["id"]
        tmp = d / "instance.json.tmp"
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, d / "instance.json")

    def free_ip(self):
        used = {r["ip"] for r in self.records()}
        for n in range(2, 255):
            ip = f"{self.args.ip_prefix}.{n}"
            if ip not in used:
                return ip
        raise Failure("INSUFFICIENT_CAPACITY", f"all addresses of {self.args.ip_prefix}.0/24 are in use",
                      "AddressesExhausted")

    def spawn(self, d, what, argv):
        logf = open(d / f"{what}.log", "ab")
        try:
            p = subprocess.Popen(argv, cwd=d, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                 start_new_session=True)
        except OSError as e:
            raise Failure("INVALID_CONFIG", f"start {what} {argv[0]}: {e}", "SpawnFailed")
        finally:
            logf.close()
        return p.pid

    def create(self, req, deadline):
        b = pathlib.Path(self.args.bin_dir)
        with self.lock:
            ip = self.free_ip()
            iid = "py-" + secrets.token_hex(5)
            d = self.dir / iid
            d.mkdir(mode=0o700)
            tags = dict(req.extra_tags)
            tags.update(owner_tags(req.owner))
            rec = {"id": iid, "name": req.name, "ip": ip, "tags": tags, "pids": [],
                   "instance_type": req.machine_type if req.HasField("machine_type") else "local-process"}
            # Recorded before anything runs: a crash leaves it listed.
            self.save(rec)
        try:
            ud = d / "user-data"
            fd = os.open(ud, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(req.user_data)
            r = subprocess.run([str(b / "process-user-data"), "--source", "file", "--file", str(ud),
                                "--out-dir", str(d / "run")], capture_output=True, timeout=max(1.0, deadline()))
            if r.returncode != 0:
                last = (r.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
                raise Failure("INVALID_REQUEST", f"the user data was refused by process-user-data: {last}",
                              "BadUserData")
            sock = d / "agent.sock"
            rec["pids"].append(self.spawn(d, "agent", [str(self.args.agent_bin or b / "kata-agent-double"),
                                                       "--socket", str(sock)]))
            self.save(rec)
            rec["pids"].append(self.spawn(d, "forwarder", [
                str(b / "agent-protocol-forwarder"), "--config", str(d / "run" / "daemon.json"),
                "--agent-socket", str(sock), "--listen", f"{ip}:{self.args.forwarder_port}"]))
            self.save(rec)
            time.sleep(0.05)
            dead = [p for p in rec["pids"] if not alive(p)]
            if dead:
                raise Failure("PERMANENT", f"instance {iid}: a process exited at start (see its logs: "
                              f"{self.tail(iid)!r})", "BootFailed")
            log.info("instance %s (%s) at %s", iid, req.name, ip)
            return rec
        except subprocess.TimeoutExpired:
            self.remove(rec)
            raise Failure("TRANSIENT", f"instance {iid}: the user-data step did not finish in time", "Timeout")
        except Failure:
            self.remove(rec)
            raise
        except OSError as e:
            self.remove(rec)
            raise Failure("TRANSIENT", f"instance {iid}: {e}", "OSError")

    def remove(self, rec):
        stop(rec.get("pids", []))
        shutil.rmtree(self.dir / rec["id"], ignore_errors=True)

    def delete(self, iid):
        if not iid.strip():
            raise Failure("INVALID_REQUEST", "refusing to act on an empty instance id")
        if "/" in iid or iid.startswith("."):
            return  # not an id of ours: nothing to delete
        p = self.dir / iid / "instance.json"
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            shutil.rmtree(self.dir / iid, ignore_errors=True)
            return  # already gone
        self.remove(rec)
        log.info("instance %s deleted", iid)

    def tail(self, iid, n=20):
        out = []
        for name in ("forwarder.log", "agent.log"):
            try:
                lines = (self.dir / iid / name).read_text(errors="replace").splitlines()
            except OSError:
                continue
            out.append(f"--- {name}\n" + "\n".join(lines[-n:]))
        return "\n".join(out) if out else None


def owner_tags(o):
    tags = {"peerpod-node": o.node}
    if o.cluster:
        tags["peerpod-cluster"] = o.cluster
    if o.sandbox_id:
        tags["peerpod-sandbox"] = o.sandbox_id
    return tags


def make_servicer(pb, pb_grpc, inst, args):
    def error(f):
        kw = {"kind": getattr(pb, f.kind), "message": f.message}
        if f.code:
            kw["code"] = f.code
        return pb.ProviderError(**kw)

    def instance(rec):
        kw = {"id": rec["id"], "name": rec["name"], "ips": [rec["ip"]], "tags": rec["tags"]}
        if rec.get("instance_type"):
            kw["instance_type"] = rec["instance_type"]
        return pb.Instance(**kw)

    class Servicer(pb_grpc.ProviderServicer):
        def Handshake(self, request, context):
            log.info("adaptor %s connected (protocol v%d)", request.adaptor_version, request.protocol_version)
            return pb.HandshakeReply(protocol_version=PROTOCOL_VERSION, provider_name="python-local",
                                     plugin_version="0.1.0", capabilities=[pb.CAPABILITY_CONSOLE_TAIL])

        def CreateInstance(self, request, context):
            try:
                rec = inst.create(request.request, lambda: context.time_remaining() or 60.0)
                return pb.CreateInstanceReply(instance=instance(rec))
            except Failure as f:
                return pb.CreateInstanceReply(error=error(f))

        def DeleteInstance(self, request, context):
            try:
                inst.delete(request.instance_id)
                return pb.DeleteInstanceReply()
            except Failure as f:
                return pb.DeleteInstanceReply(error=error(f))

        def ListInstances(self, request, context):
            want = owner_tags(request.owner)
            if not request.owner.node:
                del want["peerpod-node"]
            for rec in inst.records():
                if all(rec["tags"].get(k) == v for k, v in want.items()):
                    yield pb.ListInstancesReply(instance=instance(rec))

        def Verify(self, request, context):
            b = pathlib.Path(args.bin_dir)
            lines = []
            for name in ("process-user-data", "agent-protocol-forwarder"):
                p = b / name
                if not os.access(p, os.X_OK):
                    return pb.VerifyReply(error=error(Failure("INVALID_CONFIG", f"{p} is not executable",
                                                              "MissingBinary")))
                lines.append(f"{p} is executable")
            lines.append(f"instances in {inst.dir} on {args.ip_prefix}.0/24, forwarder port {args.forwarder_port}")
            return pb.VerifyReply(lines=lines)

        def ConsoleTail(self, request, context):
            t = inst.tail(request.instance_id) if "/" not in request.instance_id else None
            return pb.ConsoleTailReply(tail=t) if t else pb.ConsoleTailReply()

    return Servicer()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", default=os.environ.get("PEERPOD_PROVIDER_SOCKET", "/run/peerpod/provider.sock"))
    ap.add_argument("--state-dir", required=True, help="where instance records and logs live")
    ap.add_argument("--bin-dir", required=True,
                    help="directory of process-user-data, agent-protocol-forwarder, kata-agent-double")
    ap.add_argument("--agent-bin", help="the kata-agent (default: kata-agent-double in --bin-dir)")
    ap.add_argument("--forwarder-port", type=int, default=15150, help="the adaptor's FORWARDER_PORT")
    ap.add_argument("--ip-prefix", default="127.80.0", help="instances get <prefix>.2 .. <prefix>.254")
    ap.add_argument("--proto-dir", default=str(DEFAULT_PROTO_DIR))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s python-plugin %(levelname)s %(message)s")

    pb, pb_grpc = load_protocol(args.proto_dir)
    inst = Instances(args)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=32))
    pb_grpc.add_ProviderServicer_to_server(make_servicer(pb, pb_grpc, inst, args), server)
    sock = pathlib.Path(args.socket)
    sock.parent.mkdir(parents=True, exist_ok=True)
    if sock.exists():
        sock.unlink()
    old = os.umask(0o177)  # the socket is 0600: requests carry the VMs' keys
    try:
        server.add_insecure_port(f"unix://{sock}")
        server.start()
    finally:
        os.umask(old)
    log.info("serving peerpod.provider.v1 on %s", sock)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    while not done.wait(1.0):
        reap()
    server.stop(grace=2).wait()
    try:
        sock.unlink()
    except OSError:
        pass


if __name__ == "__main__":
    main()
