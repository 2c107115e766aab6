#!/usr/bin/python3
"""Key-frame round trips through a real shadowtutor-server, one client.

    bench/server_latency.py --server build/shadowtutor-server \
        [--config config/server.json] [--width 1280 --height 720] \
        [--keyframes 6] [--encoding raw|jpeg]

Starts the server on an ephemeral port, sends key frames one at a time
(waiting for each update), and prints the median round trip next to the
server's own stage times from `update.timing`, so the ratio says how much
the loop, the protocol and the copies add on top of the compute. Frames are
a synthetic moving box (JPEG frames are encoded with Pillow when it is
installed). The first key frame of a session bootstraps (every layer), so it
is reported separately from the steady state.
"""
import argparse
import io
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import msgpack
import numpy as np


def send(sock, obj):
    body = msgpack.packb(obj, use_bin_type=True)
    sock.sendall(struct.pack(">I", len(body)) + body)
    return 4 + len(body)


def recv(sock):
    def exact(n):
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed")
            buf += chunk
        return bytes(buf)
    n = struct.unpack(">I", exact(4))[0]
    return msgpack.unpackb(exact(n), raw=False), 4 + n


def frame(i, w, h):
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (np.arange(w) * 255 // max(w - 1, 1))[None, :]
    img[..., 1] = (np.arange(h) * 255 // max(h - 1, 1))[:, None]
    x0 = (i * w // 16) % (w // 2)
    img[h // 4:h // 2, x0:x0 + w // 4] = 240
    return img


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--config", default="config/server.json")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--keyframes", type=int, default=6)
    ap.add_argument("--encoding", choices=["raw", "jpeg"], default="raw")
    ap.add_argument("--backend", choices=["cpu", "cuda", "auto"],
                    help="override the config's backend")
    ap.add_argument("--bootstrap", type=int, default=1,
                    help="bootstrap_full_keyframes for the run")
    args = ap.parse_args()

    with open(args.config) as f:
        cfg = json.load(f)
    base = os.path.dirname(os.path.abspath(args.config))
    for key in ("teacher",):
        if isinstance(cfg.get(key), str):
            cfg[key] = os.path.join(base, cfg[key])
    if isinstance(cfg.get("student", {}).get("config"), str):
        cfg["student"]["config"] = os.path.join(base, cfg["student"]["config"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg.setdefault("listen", {})["port"] = port
    cfg["listen"]["host"] = "127.0.0.1"
    cfg.setdefault("metrics", {})["port"] = 0
    cfg.setdefault("distill", {})["bootstrap_full_keyframes"] = args.bootstrap
    if args.backend:
        cfg["backend"] = args.backend
    tmp = tempfile.TemporaryDirectory()
    path = os.path.join(tmp.name, "server.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    proc = subprocess.Popen([args.server, "--config", path],
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    sys.exit("server did not start")
                time.sleep(0.2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        send(sock, {"type": "hello", "proto": 1, "client_id": "bench",
                    "width": args.width, "height": args.height,
                    "encodings": [args.encoding]})
        welcome, _ = recv(sock)
        model, model_bytes = recv(sock)
        version, rows = 0, []
        for k in range(1, args.keyframes + 1):
            img = frame(k, args.width, args.height)
            if args.encoding == "jpeg":
                from PIL import Image
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, "JPEG", quality=90)
                data = buf.getvalue()
            else:
                data = img.tobytes()
            t0 = time.perf_counter()
            up = send(sock, {"type": "keyframe", "seq": k, "frame_index": k,
                             "encoding": args.encoding, "width": args.width,
                             "height": args.height, "data": data,
                             "version": version})
            u, down = recv(sock)
            rtt = (time.perf_counter() - t0) * 1000
            version = u["version"]
            t = u["timing"]
            compute = t["decode"] + t["teacher"] + t["distill"] + t["encode"]
            rows.append((k, rtt, compute, t, u["steps"], up, down,
                         len(u["tensors"])))
        send(sock, {"type": "bye"})
        sock.close()
    finally:
        proc.terminate()
        proc.wait()

    print("server: %s, backend %s, %dx%d %s key frames, model message %.2f MB"
          % (args.config, cfg.get("backend", "cpu"), args.width, args.height,
             args.encoding, model_bytes / 1e6))
    print("%3s %9s %9s %7s %7s %8s %7s %5s %9s %9s %4s" % (
        "kf", "rtt_ms", "stages", "queue", "decode", "teacher", "distill",
        "steps", "up_bytes", "down_b", "tens"))
    for k, rtt, comp, t, steps, up, down, nt in rows:
        print("%3d %9.1f %9.1f %7.2f %7.1f %8.1f %7.1f %5d %9d %9d %4d" % (
            k, rtt, comp, t["queue"], t["decode"], t["teacher"], t["distill"],
            steps, up, down, nt))
    steady = [r for r in rows if r[0] > args.bootstrap] or rows
    med_rtt = statistics.median(r[1] for r in steady)
    med_comp = statistics.median(r[2] for r in steady)
    print("steady state (key frames after bootstrap): median round trip "
          "%.1f ms, median server stages %.1f ms, overhead %.1f ms "
          "(round trip / stages = %.3f)" % (med_rtt, med_comp,
                                             med_rtt - med_comp,
                                             med_rtt / med_comp))


if __name__ == "__main__":
    main()
