#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets into fuzz/corpus/<target>/.

The seeds are small valid (and a few nearly valid) inputs from which
libFuzzer mutates; they are committed, so run this only to change them
(`python3 fuzz/seeds.py`). Config seeds are the packaged example files.
"""
import io
import json
import os
import struct
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


# ---------------------------------------------------------------- protobuf
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, value):
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, float):
        return varint(num << 3 | 1) + struct.pack("<d", value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def msg(*fields):
    return b"".join(field(n, v) for n, v in fields)


def check(name, status=1, values=()):
    vals = [(4, msg((1, n), (2, v), (3, u))) for n, v, u in values]
    return msg((1, name), (2, "disk"), (3, status), *vals, (5, "ok"), (6, 1700000000000), (7, 1200))


def report(seq, check_=None, job=None):
    return msg((1, seq), (2, check_)) if check_ is not None else msg((1, seq), (3, job))


def batch(*reports):
    return msg((2, msg(*[(1, r) for r in reports], (2, 0))))


put("protocol_decode", "checks", batch(report(1, check("root-disk", 1, [("used", 42.5, "%")])), report(2, check("memory", 2))))
put("protocol_decode", "job-progress", batch(report(4, job=msg((1, "j1"), (2, "a1"), (3, msg((1, "fetch"), (2, 50.0), (3, "half")))))))
put("protocol_decode", "job-output", batch(report(5, job=msg((1, "j1"), (2, "a1"), (4, msg((1, 0), (2, b"hello\n"), (3, 0)))))))
finished = msg((1, "succeeded"), (2, ""), (3, "{}"), (4, 1700000000000), (5, "exec"), (6, msg((1, "command"), (2, "true"))), (7, 1699999999000))
put("protocol_decode", "job-finished", batch(report(6, job=msg((1, "j1"), (2, "a1"), (5, finished)))))
put("protocol_decode", "local-run", batch(report(7, job=msg((1, ""), (2, "local-1"), (5, finished)))))
put("protocol_decode", "out-of-order", batch(report(3, check("a")), report(2, check("b"))))
put("protocol_decode", "hello", msg((1, msg((1, "0.1.0"), (2, msg((1, "os"), (2, "linux"))), (3, 0), (4, 0), (5, 1)))))
put("protocol_decode", "heartbeat", msg((3, msg((1, 1700000000000), (2, 3), (3, 0)))))

# ---------------------------------------------------------------- configs
put("agent_config", "packaged", open(os.path.join(ROOT, "packaging/steward-agent/agent.toml"), "rb").read())
put("agent_config", "checks", """\
[agent]
max_jobs = 4
[server]
url = "https://cp.example:7443"
[[checks]]
name = "web"
kind = "http"
url = "http://127.0.0.1:8080/health"
interval = "30s"
warning = "200ms"
critical = "1s"
[[checks]]
name = "db"
kind = "tcp"
address = "127.0.0.1:5432"
[[checks]]
name = "nginx"
kind = "systemd"
unit = "nginx.service"
schedule = "*/5 * * * *"
[[checks]]
name = "tls"
kind = "certs"
paths = ["/etc/ssl/certs/site.pem"]
""")
put("agent_config", "apps", """\
[[apps]]
name = "web"
unit = "web.service"
root = "/srv/web"
keep_releases = 3
[jobs]
allow = ["exec", "deploy.apply"]
""")
put("controlplane_config", "packaged", open(os.path.join(ROOT, "packaging/steward-controlplane/controlplane.toml"), "rb").read())
put("controlplane_config", "rbac", """\
data_dir = "/var/lib/steward"
database_url = "postgres://steward@127.0.0.1/steward"
[grpc]
listen = "127.0.0.1:7443"
max_batch = 500
[rest]
listen = "127.0.0.1:8080"
[[rbac.roles]]
name = "web-ops"
description = "web team"
allow = ["*:read", "jobs:*"]
deny = ["audit:read"]
rules = [{ effect = "allow", permission = "jobs:create", hosts = "team=web,env in (staging,prod)" }]
[retention]
results = "30d"
""")

# ---------------------------------------------------------------- selectors, rules
for i, s in enumerate(["env=prod", "env==prod,team!=web", "tier in (a,b),zone notin (x)", "gpu,!spot",
                       "app.kubernetes.io/name=web", "", "k in ()", "a=b,c"]):
    put("selector_parse", f"s{i}", s)
put("rbac_rules", "rules", json.dumps([
    {"effect": "allow", "permission": "*:read"},
    {"effect": "allow", "permission": "jobs:*", "hosts": "env=staging"},
    {"effect": "deny", "permission": "jobs:create", "hosts": "env=prod,team notin (web)"},
]))
put("rbac_rules", "pattern", "hosts:write")
put("rbac_rules", "all", json.dumps([{"effect": "allow", "permission": "*:*"}]))


# ---------------------------------------------------------------- tar
def tar_bytes(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if kind == "file":
                info.size = len(extra)
                info.mode = 0o755
                t.addfile(info, io.BytesIO(extra))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = extra
                t.addfile(info)
            elif kind == "hard":
                info.type = tarfile.LNKTYPE
                info.linkname = extra
                t.addfile(info)
    return buf.getvalue().rstrip(b"\0") + b"\0" * 1024  # two zero blocks end it


# 0xfe: a raw tar stream; otherwise `KIND NAME\tDATA` lines (see the target).
put("deploy_unpack", "release", b"\xfe" + tar_bytes([("bin", "dir", None), ("bin/app", "file", b"#!/bin/sh\necho hi\n"),
                                                   ("current", "sym", "bin/app"), ("etc/app.conf", "file", b"x=1\n")]))
put("deploy_unpack", "raw-links", b"\xfe" + tar_bytes([("d", "dir", None), ("d/up", "sym", ".."), ("top", "sym", "d/up")]))
put("deploy_unpack", "raw-hardlink", b"\xfe" + tar_bytes([("a", "file", b"a"), ("b", "hard", "a")]))
put("deploy_unpack", "lines", "d bin\nf bin/app\t#!/bin/sh\nl current\tbin/app\nf etc/app.conf\tx=1\n")
put("deploy_unpack", "links", "d d\nl d/up\t..\nl d/self\t.\nl top\td/up\nl deep\td/self/self\nf d/x\tx\n")
put("deploy_unpack", "escapes", "f ../x\tx\nf /abs\tx\nl out\t../x\nh hard\tbin/app\nc dev\t\np fifo\t\n")

# ---------------------------------------------------------------- audit export
put("audit_export", "not-export", json.dumps({"format": "other"}))
# corpus/audit_export/export is a real signed export (4 entries, a start
# checkpoint), written once by the round-trip test in controlplane/src/audit/tests.rs.
