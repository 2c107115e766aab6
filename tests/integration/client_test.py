#!/usr/bin/python3
"""Loopback integration tests of shadowtutor-client against the real
shadowtutor-server, a TCP proxy that cuts connections, and fake servers
written from docs/protocol.md (Debian's python3-msgpack).

    client_test.py --client BUILD/client/shadowtutor-client
                   --server BUILD/shadowtutor-server
                   --clip BUILD/client/shadowtutor-clip
                   --config-dir config --fixtures tests/fixtures [-v]

Videos are made by shadowtutor-clip (moving shapes, 64x48, MPEG-4 unless a
test says otherwise) into a temporary folder, and counted with its
independent decoder. The servers use the repository's tiny teacher and a
random student (labels are meaningless but deterministic), on ephemeral
ports, with one worker thread, so the file runs in about a minute on two
cores.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

import msgpack

CLIENT = SERVER = CLIP = CONFIG_DIR = FIXTURES = None
SANITIZED = False
W, H = 64, 48
TMP = None          # module temporary folder
CLIPS = {}          # name -> path
WEIGHTS = None      # a student weights file (safetensors)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_clip(name, frames, fps=12, codec="mpeg4", corrupt=None, size=(W, H)):
    path = os.path.join(TMP, name)
    cmd = [CLIP, "make", path, "--size", "%dx%d" % size, "--frames",
           str(frames), "--fps", str(fps), "--codec", codec]
    if corrupt:
        cmd += ["--corrupt", ",".join(str(c) for c in corrupt)]
    subprocess.run(cmd, check=True)
    return path


def count_frames(path):
    out = subprocess.run([CLIP, "count", path], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def setUpModule():
    global TMP, WEIGHTS
    TMP = tempfile.mkdtemp(prefix="client_test.")
    CLIPS["clip48"] = make_clip("clip48.mp4", 48)
    CLIPS["clip48_mkv"] = make_clip("clip48.mkv", 48)
    CLIPS["clip72"] = make_clip("clip72.mp4", 72)
    CLIPS["clip120_mkv"] = make_clip("clip120.mkv", 120)
    CLIPS["clip300_mkv"] = make_clip("clip300.mkv", 300)
    CLIPS["corrupt"] = make_clip("corrupt.avi", 48, codec="mjpeg",
                                 corrupt=[10, 20, 30])
    CLIPS["fast"] = make_clip("fast.mp4", 200, fps=500)
    WEIGHTS = os.path.join(FIXTURES, "student_weights.safetensors")


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def client_config(**overrides):
    cfg = {"student": os.path.join(CONFIG_DIR, "student.json"),
           "connect_timeout_ms": 60000, "handshake_timeout_ms": 20000,
           "reconnect_initial_ms": 100, "reconnect_max_ms": 400,
           "stats_interval_ms": 200, "progress": "off", "log_level": "debug"}
    cfg.update(overrides)
    fd, path = tempfile.mkstemp(suffix=".json", dir=TMP)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    return path


class Run:
    """One finished client run: exit status, stderr, stats lines, events."""

    def __init__(self, rc, stderr, stats):
        self.rc, self.stderr, self.stats = rc, stderr, stats
        self.summary = stats[-1] if stats and stats[-1]["type"] == "summary" \
            else None
        self.events = []
        for line in stderr.splitlines():
            m = re.match(r"\S+ (\w+) event=(\w+)(.*)$", line)
            if not m:
                continue
            ev = {"level": m.group(1), "event": m.group(2)}
            for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', m.group(3)):
                ev[k] = v.strip('"')
            self.events.append(ev)

    def of(self, name):
        return [e for e in self.events if e["event"] == name]


def start_client(args, config=None, stdin=None):
    stats = os.path.join(TMP, "stats-%d.jsonl" % time.monotonic_ns())
    cmd = [CLIENT, "--config", config or client_config(), "--stats", stats] + \
        args
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # Bytes, decoded below: text mode would turn the progress line's \r
    # into newlines.
    proc = subprocess.Popen(cmd, stdin=stdin, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)
    return proc, stats


def finish_client(proc, stats, timeout=240, input=None):
    """Wait for the client (writing `input` to its stdin, then closing
    it) and collect its run."""
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError("client timed out:\n" +
                             err.decode(errors="replace")[-4000:])
    out = out.decode(errors="replace")
    err = err.decode(errors="replace")
    lines = []
    if os.path.exists(stats):
        with open(stats) as f:
            lines = [json.loads(l) for l in f]  # every line must parse
    run = Run(proc.returncode, err, lines)
    run.stdout = out
    return run


def run_client(args, config=None, stdin=None, timeout=240):
    proc, stats = start_client(args, config, stdin)
    return finish_client(proc, stats, timeout)


class Server:
    """shadowtutor-server on a fixed port, restartable."""

    def __init__(self, **overrides):
        self.dir = tempfile.mkdtemp(dir=TMP)
        self.port = free_port()
        self.metrics_port = free_port()
        cfg = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "metrics": {"host": "127.0.0.1", "port": self.metrics_port},
            "backend": "cpu", "workers": 1, "threads_per_worker": 1,
            "teacher": os.path.join(CONFIG_DIR, "teacher-small.json"),
            "student": {"config": os.path.join(CONFIG_DIR, "student.json"),
                        "weights": None},
            "distill": {"max_updates": 2, "bootstrap_full_keyframes": 1},
            "log_level": "info",
        }
        for k, v in overrides.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k].update(v)
            else:
                cfg[k] = v
        self.config = os.path.join(self.dir, "server.json")
        with open(self.config, "w") as f:
            json.dump(cfg, f)
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc = None
        self.start()

    def start(self):
        log = open(self.log_path, "a")
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
        self.proc = subprocess.Popen([SERVER, "--config", self.config],
                                     stderr=log, env=env)
        log.close()
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.log())
            try:
                url = "http://127.0.0.1:%d/readyz" % self.metrics_port
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server not ready: " + self.log())

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        if rc != 0:
            raise AssertionError("server exited %s:\n%s" % (rc, self.log()[-3000:]))


def keyframe_schedule_ok(test, run, min_stride):
    """Algorithm 4 under the block policy: the first frame is a key frame,
    each next one comes exactly `stride` frames after the previous one,
    where stride is what the update answering the previous one said, and
    every update lands within min_stride frames of its key frame."""
    keys = {int(e["seq"]): int(e["frame"]) for e in run.of("keyframe")}
    updates = {int(e["seq"]): e for e in run.of("update_applied")}
    test.assertEqual(keys.get(1), 0, keys)
    seqs = sorted(keys)
    test.assertEqual(seqs, list(range(1, len(seqs) + 1)))
    checked = 0
    for s in seqs[:-1]:
        u = updates.get(s)
        test.assertIsNotNone(u, "key frame %d got no update" % s)
        test.assertEqual(keys[s + 1] - keys[s], int(u["stride"]),
                         "key frame %d at %d, %d after %d with stride %s"
                         % (s + 1, keys[s + 1], keys[s + 1] - keys[s], keys[s],
                            u["stride"]))
        test.assertLessEqual(int(u["delay"]), min_stride)
        test.assertLessEqual(int(u["frame"]) - keys[s], min_stride)
        checked += 1
    return checked


class LoopbackTest(unittest.TestCase):
    """The real server, one for the class."""

    @classmethod
    def setUpClass(cls):
        cls.srv = Server()
        cls.addr = "127.0.0.1:%d" % cls.srv.port

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def test_video_end_to_end(self):
        out = os.path.join(TMP, "overlay.mp4")
        masks = os.path.join(TMP, "masks")
        # Paced (4 s of video, so there are statistics intervals), with a
        # queue deep enough that no wait for an update drops a frame.
        run = run_client(["--server", self.addr, "--input", CLIPS["clip48"],
                          "--output", out, "--masks", masks, "--realtime",
                          "--queue-frames", "64"])
        self.assertEqual(run.rc, 0, run.stderr[-3000:])
        s = run.summary
        self.assertIsNotNone(s, run.stats)
        # Every frame of the video, once.
        self.assertEqual(s["frames"], 48)
        self.assertEqual(s["decoded"], 48)
        self.assertEqual(s["frames_total"], 48)
        self.assertEqual((s["dropped"], s["decode_errors"]), (0, 0))
        # A blank device: the server's model was adopted, then updates.
        self.assertEqual(s["models_adopted"], 1)
        self.assertEqual(s["sessions"], 1)
        self.assertEqual(s["malformed"], 0)
        self.assertGreaterEqual(s["updates_applied"], 3)
        # Every update that changed tensors moved the version by one; one
        # the student already agreed with carries none and keeps it.
        changed = [e for e in run.of("update_applied")
                   if int(e["tensors"]) > 0]
        self.assertEqual(s["version"], len(changed))
        self.assertLessEqual(s["version"], s["updates_applied"])
        self.assertEqual(s["keyframes"], len(run.of("keyframe")))
        self.assertEqual(s["keyframes_sent"], s["keyframes"])
        self.assertGreater(s["bytes_up"], 0)
        self.assertGreater(s["bytes_down"], 1900000)  # the f32 model alone
        self.assertTrue(0.0 <= s["metric"] <= 1.0)
        self.assertGreater(s["student_ms"], 0.0)
        self.assertTrue(0.0 < s["frame_ms_p50"] <= s["frame_ms_p99"])
        self.assertGreaterEqual(keyframe_schedule_ok(self, run, 8), 3)
        # The overlay decodes with the same frame count, size and rate.
        info = count_frames(out)
        self.assertEqual((info["frames"], info["width"], info["height"]),
                         (48, W, H))
        self.assertAlmostEqual(info["fps"], 12.0, places=3)
        self.assertIn(info["codec"], ("h264", "mpeg4"))
        self.assertEqual(s["overlay_frames"], 48)
        # One paletted PNG per frame.
        names = sorted(os.listdir(masks))
        self.assertEqual(names, ["frame_%08d.png" % i for i in range(48)])
        with open(os.path.join(masks, names[5]), "rb") as f:
            png = f.read()
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        w, h, depth, color = struct.unpack(">IIBB", png[16:26])
        self.assertEqual((w, h, depth, color), (W, H, 8, 3))  # 3: palette
        plte = png.index(b"PLTE")
        n = struct.unpack(">I", png[plte - 4:plte])[0]
        self.assertGreaterEqual(n, 3 * 2)
        self.assertEqual(png[plte + 4:plte + 10], bytes([0, 0, 0, 128, 0, 0]))
        # Statistics: intervals and one "update" line per answered key
        # frame, then one summary.
        intervals = [l for l in run.stats if l["type"] == "interval"]
        updates = [l for l in run.stats if l["type"] == "update"]
        self.assertEqual(len(intervals) + len(updates) + 1, len(run.stats))
        self.assertGreaterEqual(len(intervals), 10)
        keys = {"frames", "fps", "keyframes", "stride", "bytes_up",
                "bytes_down", "update_delay_frames", "metric",
                "frames_past_due", "reconnects", "online"}
        for line in intervals:
            self.assertTrue(keys <= set(line), set(line))
        frames = [l["frames"] for l in intervals + [run.stats[-1]]]
        self.assertEqual(frames, sorted(frames))
        s = run.summary
        self.assertEqual(sum(u["applied"] for u in updates),
                         s["updates_applied"])
        self.assertEqual([u["seq"] for u in updates],
                         sorted(u["seq"] for u in updates))
        for prev, u in zip([None] + updates, updates):
            self.assertTrue(8 <= u["stride"] <= 64)
            self.assertTrue(0.0 <= u["metric"] <= 1.0)
            self.assertEqual(u["frame"] - u["delay_frames"] >= 0, True)
            self.assertGreater(u["bytes"], 0)
            if prev is not None:
                # The wire totals only grow, by at least this update.
                self.assertGreaterEqual(u["bytes_down"] - prev["bytes_down"],
                                        u["bytes"])
        self.assertLessEqual(updates[-1]["bytes_down"], s["bytes_down"])

    def test_raw_keyframes_never_wait(self):
        run = run_client(["--server", self.addr, "--input", CLIPS["clip48"],
                          "--keyframe-encoding", "raw", "--wait-policy",
                          "never"])
        self.assertEqual(run.rc, 0, run.stderr[-3000:])
        s = run.summary
        self.assertEqual(s["frames"], 48)
        self.assertEqual((s["waits"], s["wait_timeouts"]), (0, 0))
        self.assertGreaterEqual(s["keyframes"], 1)
        sent = [e for e in run.of("keyframe_sent")]
        self.assertTrue(sent and all(e["encoding"] == "raw" for e in sent))
        self.assertTrue(all(int(e["bytes"]) == W * H * 3 for e in sent))
        # Frames run past due instead of waiting: exactly those from
        # min_stride (8) frames after a key frame up to the frame its update
        # was applied before (or the end); and a key frame that falls due
        # while one is awaited goes out with the frame that applies the
        # awaited update.
        keys = {int(e["seq"]): int(e["frame"]) for e in run.of("keyframe")}
        updates = {int(e["seq"]): int(e["frame"])
                   for e in run.of("update_applied")}
        strides = {int(e["seq"]): int(e["stride"])
                   for e in run.of("update_applied")}
        past_due = sum(max(0, updates.get(q, 48) - (keys[q] + 8))
                       for q in keys)
        self.assertEqual(s["frames_past_due"], past_due, run.stderr[-3000:])
        for seq in sorted(keys)[1:]:
            prev = seq - 1
            self.assertIn(prev, updates)
            due = keys[prev] + strides[prev]
            self.assertEqual(keys[seq], max(due, updates[prev]))

    def test_corrupt_frames_counted(self):
        out = os.path.join(TMP, "corrupt-overlay.mkv")
        run = run_client(["--server", self.addr, "--input", CLIPS["corrupt"],
                          "--output", out])
        self.assertEqual(run.rc, 0, run.stderr[-3000:])
        ref = count_frames(CLIPS["corrupt"])
        self.assertEqual((ref["frames"], ref["decode_errors"]), (45, 3))
        s = run.summary
        self.assertEqual(s["decode_errors"], 3)
        self.assertEqual(s["frames"], 45)
        self.assertEqual(count_frames(out)["frames"], 45)

    def test_stdin_and_progress(self):
        with open(CLIPS["clip48_mkv"], "rb") as f:
            run = run_client(["--server", self.addr, "--input", "-",
                              "--progress", "on"], stdin=f)
        self.assertEqual(run.rc, 0, run.stderr[-3000:])
        self.assertEqual(run.summary["frames"], 48)
        # The progress line is redrawn in place and ends with the total.
        self.assertTrue(run.stdout.startswith("\r"), run.stdout[:80])
        last = run.stdout.rstrip("\n").split("\r")[-1]
        self.assertTrue(last.startswith("frame 48/"), last)
        self.assertIn(" fps  stride ", last)
        self.assertTrue(run.stdout.endswith("\n"))
        # A pipe cannot be played twice.
        with open(CLIPS["clip48_mkv"], "rb") as f:
            run2 = run_client(["--server", self.addr, "--input", "-",
                               "--loop", "2"], stdin=f)
        self.assertEqual(run2.rc, 1)
        self.assertIn("cannot be rewound: --loop needs a file", run2.stderr)
        # Not a terminal, and not asked for: no progress at all.
        run = run_client(["--server", self.addr, "--input", CLIPS["clip48"]])
        self.assertEqual(run.stdout, "")

    def test_sigint_finishes_the_files(self):
        out = os.path.join(TMP, "interrupted.mp4")
        proc, stats = start_client(["--server", self.addr, "--input",
                                    CLIPS["clip72"], "--realtime", "--output",
                                    out])
        def frames_so_far():
            try:
                with open(stats) as f:
                    lines = [l for l in f.read().split("\n")[:-1] if l]
                return json.loads(lines[-1])["frames"] if lines else 0
            except (OSError, ValueError):
                return 0
        wait_for(lambda: frames_so_far() >= 12, 60, "12 frames")
        proc.send_signal(signal.SIGINT)
        run = finish_client(proc, stats)
        self.assertEqual(run.rc, 0, run.stderr[-3000:])
        s = run.summary
        self.assertTrue(12 <= s["frames"] < 72, s["frames"])
        # The overlay was finished: it decodes, every processed frame in it.
        self.assertEqual(count_frames(out)["frames"], s["frames"])
        self.assertTrue(run.of("stop_requested"))

    def test_loop_size_and_sparse_masks(self):
        out = os.path.join(TMP, "small.mp4")
        masks = os.path.join(TMP, "masks-every")
        run = run_client(["--server", self.addr, "--input", CLIPS["clip48"],
                          "--loop", "2", "--size", "32x24", "--output", out,
                          "--masks", masks, "--masks-every", "10"])
        self.assertEqual(run.rc, 0, run.stderr[-3000:])
        s = run.summary
        self.assertEqual((s["frames"], s["width"], s["height"]), (96, 32, 24))
        info = count_frames(out)
        self.assertEqual((info["frames"], info["width"], info["height"]),
                         (96, 32, 24))
        self.assertEqual(sorted(os.listdir(masks)),
                         ["frame_%08d.png" % i for i in range(0, 96, 10)])
        self.assertEqual(s["masks_written"], 10)

    def test_realtime_drops_counted(self):
        # 500 fps: the block waits (one server round trip per key frame)
        # outlast the queue, so frames are dropped, and counted.
        run = run_client(["--server", self.addr, "--input", CLIPS["fast"],
                          "--realtime", "--queue-frames", "1"])
        self.assertEqual(run.rc, 0, run.stderr[-3000:])
        s = run.summary
        self.assertEqual(s["decoded"], 200)
        self.assertGreater(s["dropped"], 0)
        self.assertEqual(s["frames"] + s["dropped"], 200)
        self.assertGreaterEqual(s["seconds"], 200 / 500.0 * 0.9)

    def test_bad_inputs(self):
        cases = [
            (["--server", self.addr, "--input", os.path.join(TMP, "none.mp4")],
             1, "cannot open input"),
            (["--server", self.addr, "--input", WEIGHTS], 1, "input"),
            (["--server", self.addr, "--input", CLIPS["clip48"],
              "--jpeg-qualty", "5"], 2, "unknown option '--jpeg-qualty'"),
            (["--server", self.addr, "--input", CLIPS["clip48"], "--size",
              "0x4"], 2, "size '0x4'"),
            (["--server", "127.0.0.1:%d" % free_port(), "--input",
              CLIPS["clip48"], "--connect-timeout-ms", "700"], 1,
             "no session with the server"),
            (["--server", self.addr], 2, "no input"),
            (["--server", self.addr, "--input",
              "rtsp://127.0.0.1:%d/cam" % free_port()], 1,
             "cannot open input 'rtsp://127.0.0.1:"),
            (["--server", self.addr, "--input", "/dev/video99"], 1,
             "cannot open input '/dev/video99'"),
        ]
        for args, code, text in cases:
            with self.subTest(args=args):
                t0 = time.time()
                run = run_client(args)
                self.assertEqual(run.rc, code, run.stderr[-2000:])
                errors = [l for l in run.stderr.splitlines()
                          if l.startswith("shadowtutor-client: ")]
                self.assertEqual(len(errors), 1, run.stderr)
                self.assertIn(text, errors[0])
                self.assertLess(time.time() - t0, 30)
        bad = os.path.join(TMP, "bad.json")
        with open(bad, "w") as f:
            f.write('{"jpeg_quality": 90, "wait_polcy": "never"}')
        run = run_client(["--input", CLIPS["clip48"]], config=bad)
        self.assertEqual(run.rc, 2)
        self.assertIn("unknown key wait_polcy", run.stderr)


class WeightsTest(unittest.TestCase):
    """A server with base weights: a client holding that very file gets no
    model; one holding another file adopts the server's."""

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(student={"weights": WEIGHTS},
                         distill={"bootstrap_full_keyframes": 0})
        cls.addr = "127.0.0.1:%d" % cls.srv.port

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def test_hash_decides_the_model(self):
        run = run_client(["--server", self.addr, "--input", CLIPS["clip48"],
                          "--weights", WEIGHTS])
        self.assertEqual(run.rc, 0, run.stderr[-3000:])
        s = run.summary
        self.assertEqual((s["frames"], s["models_adopted"]), (48, 0))
        self.assertLess(s["bytes_down"], 1900000)
        self.assertGreaterEqual(s["updates_applied"], 1)
        self.assertIn("model=0", self.srv.log())
        # One weight changed: another file, so the server's model is taken.
        other = os.path.join(TMP, "other.safetensors")
        data = bytearray(open(WEIGHTS, "rb").read())
        data[-2] ^= 0x01
        with open(other, "wb") as f:
            f.write(data)
        run = run_client(["--server", self.addr, "--input", CLIPS["clip48"],
                          "--weights", other])
        self.assertEqual(run.rc, 0, run.stderr[-3000:])
        self.assertEqual(run.summary["models_adopted"], 1)
        self.assertGreater(run.summary["bytes_down"], 1900000)


class Proxy:
    """A TCP relay that can cut every connection it carries, and records the
    first message of each client connection (the hello)."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.pairs, self.hellos = [], []
        self.server_bytes = 0  # relayed server -> client
        # When set, every connection is cut right after the next `update`
        # is relayed: the session then has no job in flight on the server.
        self.cut_after_update = threading.Event()
        self.lock = threading.Lock()
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.pairs.append((c, s))
            threading.Thread(target=self.pump, args=(c, s, True),
                             daemon=True).start()
            threading.Thread(target=self.pump, args=(s, c, False),
                             daemon=True).start()

    def pump(self, src, dst, from_client):
        first, buf = from_client, b""
        down = b""  # server -> client bytes not yet framed
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                for x in (src, dst):
                    try:
                        x.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            if first:
                buf += data
                if len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                    n = struct.unpack(">I", buf[:4])[0]
                    with self.lock:
                        self.hellos.append(msgpack.unpackb(buf[4:4 + n], raw=False))
                    first = False
            else:
                with self.lock:
                    if not from_client:
                        self.server_bytes += len(data)
            try:
                dst.sendall(data)
            except OSError:
                return
            if from_client:
                continue
            down += data
            while len(down) >= 4 and len(down) >= 4 + struct.unpack(">I", down[:4])[0]:
                n = struct.unpack(">I", down[:4])[0]
                kind = msgpack.unpackb(down[4:4 + n], raw=False).get("type")
                down = down[4 + n:]
                if kind == "update" and self.cut_after_update.is_set():
                    self.cut_after_update.clear()
                    self.cut()
                    return

    def cut(self):
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for c, s in pairs:
            for x in (c, s):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                x.close()

    def close(self):
        self.lsock.close()
        self.cut()


def stats_last(path, key):
    """`key` in the last complete stats line (-1: no line yet)."""
    try:
        with open(path) as f:
            lines = [l for l in f.read().split("\n")[:-1] if l]
        return json.loads(lines[-1])[key] if lines else -1
    except (OSError, ValueError):
        return -1


def stats_version(path):
    """The model version in the last complete stats line (-1: none yet)."""
    return stats_last(path, "version")


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for " + what)


class PipedInput:
    """A video written to a client's stdin piece by piece, so that the test
    decides when the input goes on, and so when it ends: a network event
    cannot race the end of a fixed-length clip on a slow machine."""

    def __init__(self, proc, path):
        self.proc = proc
        with open(path, "rb") as f:
            self.data = f.read()
        self.sent = 0
        self.writer = None

    def send_until(self, fraction):
        """Writes up to `fraction` of the file (from a thread: the pipe may
        hold less than a piece)."""
        end = int(len(self.data) * fraction)
        piece, self.sent = self.data[self.sent:end], end
        self.wait()
        self.writer = threading.Thread(target=self.proc.stdin.write,
                                       args=(piece,))
        self.writer.start()

    def wait(self):
        if self.writer:
            self.writer.join()
            self.writer = None

    def rest(self):
        """What is left, for finish_client to write and close."""
        self.wait()
        return self.data[self.sent:]


class ReconnectTest(unittest.TestCase):
    def test_server_killed_and_restarted(self):
        srv = Server()
        out = os.path.join(TMP, "restart.mp4")
        proc = None
        try:
            proc, stats = start_client(
                ["--server", "127.0.0.1:%d" % srv.port, "--input", "-",
                 "--output", out], stdin=subprocess.PIPE)
            video = PipedInput(proc, CLIPS["clip120_mkv"])
            video.send_until(0.6)  # past FFmpeg's 5 s stream probe
            wait_for(lambda: stats_version(stats) >= 1, 60, "a first update")
            srv.kill()
            time.sleep(0.3)
            srv.start()
            wait_for(lambda: stats_last(stats, "reconnects") >= 1, 60,
                     "the client back online")
            # The rest of the video after the reconnect: its key frames
            # reach the restarted server.
            run = finish_client(proc, stats, input=video.rest())
        finally:
            if proc and proc.poll() is None:
                proc.kill()
                proc.wait()
            srv.stop()
        self.assertEqual(run.rc, 0, run.stderr[-3000:])
        s = run.summary
        # No frame lost: the student ran on while the server was away.
        self.assertEqual(s["frames"], 120)
        self.assertEqual(count_frames(out)["frames"], 120)
        self.assertEqual(s["reconnects"], 1)
        self.assertEqual(s["sessions"], 2)
        self.assertEqual(s["malformed"], 0)
        self.assertTrue(run.of("disconnected"))
        online = run.of("online")
        self.assertEqual(len(online), 2)
        # The restarted server lost the session: a new one, whose model the
        # client (holding updated weights) keeps out...
        self.assertEqual(online[1]["resumed"], "0")
        self.assertNotEqual(online[1]["session"], online[0]["session"])
        self.assertEqual(s["models_ignored"], 1)
        # ...and its first key frame reports the old version, so the
        # server resyncs it with a full update.
        back = [i for i, e in enumerate(run.events)
                if e["event"] == "online"][1]
        later = [e for e in run.events[back:]
                 if e["event"] == "update_applied" and e["full"] == "1"]
        self.assertTrue(later, run.stderr[-3000:])

    def test_dropped_connection_resumes_session(self):
        srv = Server()
        proxy = Proxy(srv.port)
        proc = None
        try:
            proc, stats = start_client(
                ["--server", "127.0.0.1:%d" % proxy.port, "--input", "-"],
                stdin=subprocess.PIPE)
            video = PipedInput(proc, CLIPS["clip300_mkv"])
            video.send_until(0.25)  # 75 frames: past the stream probe
            wait_for(lambda: stats_version(stats) >= 1, 60, "a first update")
            # No bye: the server keeps the session lingering. Cut after an
            # update, when no job of the session runs (a session with a job
            # in flight is parked only when the job ends, and a resume that
            # arrives before that gets a new session); the client waits for
            # an update before its next key frame, so none is in flight.
            # The next 100 frames hold a key frame whatever the stride (at
            # most 64), so an update comes.
            proxy.cut_after_update.set()
            video.send_until(0.6)
            wait_for(lambda: len(proxy.hellos) >= 2, 60, "a second hello")
            wait_for(lambda: stats_last(stats, "resumed") >= 1, 60,
                     "the session resumed")
            run = finish_client(proc, stats, input=video.rest())
        finally:
            if proc and proc.poll() is None:
                proc.kill()
                proc.wait()
            proxy.close()
            srv.stop()
        self.assertEqual(run.rc, 0, run.stderr[-3000:])
        s = run.summary
        self.assertEqual(s["frames"], 300)
        self.assertEqual(s["resumed"], 1)
        first, second = proxy.hellos[0], proxy.hellos[1]
        self.assertNotIn("resume", first)
        online = run.of("online")
        self.assertEqual(second["resume"]["session"], online[0]["session"])
        self.assertGreaterEqual(second["resume"]["version"], 1)
        self.assertEqual(online[1]["session"], online[0]["session"])
        self.assertEqual(online[1]["resumed"], "1")
        # Resumed: no model the second time.
        self.assertEqual(s["models_adopted"], 1)
        self.assertEqual(s["models_ignored"], 0)


# ---- fake servers ---------------------------------------------------------------------

def frame_bytes(obj):
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def recv_msg(sock):
    n = struct.unpack(">I", recv_exact(sock, 4))[0]
    return msgpack.unpackb(recv_exact(sock, n), raw=False)


def student_layout():
    """name -> shape, from the weights file's safetensors header."""
    with open(WEIGHTS, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def welcome(session):
    return frame_bytes({"type": "welcome", "proto": 1, "session": session,
                        "version": 0, "threshold": 0.8, "min_stride": 8,
                        "max_stride": 64, "stride": 8, "trainable": [],
                        "update_encoding": "f32"})


def update(seq, version, tensors, stride=8):
    return frame_bytes({"type": "update", "seq": seq, "version": version,
                        "base_version": version - (1 if tensors else 0),
                        "full": False, "stride": stride, "metric": 0.5,
                        "steps": 1, "encoding": "f32", "tensors": tensors,
                        "timing": {"queue": 0, "decode": 0, "teacher": 0,
                                   "distill": 0, "encode": 0}})


class FakeServer:
    """Accepts clients one after the other; `script(i, sock, hello)` plays
    connection i. Records every hello."""

    def __init__(self, script):
        self.script = script
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4)
        self.port = self.lsock.getsockname()[1]
        self.hellos = []
        self.errors = []
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        i = 0
        while True:
            try:
                sock, _ = self.lsock.accept()
            except OSError:
                return
            try:
                sock.settimeout(30)
                hello = recv_msg(sock)
                ping = recv_msg(sock)
                self.hellos.append(hello)
                self.script(i, sock, hello, ping)
            except (OSError, ConnectionError) as e:
                self.errors.append("%d: %r" % (i, e))
            finally:
                sock.close()
            i += 1

    def close(self):
        self.lsock.close()


class FakeServerTest(unittest.TestCase):
    def test_malformed_updates_disconnect_and_retry(self):
        layout = student_layout()
        name = sorted(n for n in layout if len(layout[n]) >= 2)[0]
        shape = layout[name]
        numel = 1
        for d in shape:
            numel *= d
        nan = struct.pack("<f", float("nan")) * numel
        bad = [
            # (what, bytes answering key frame `seq`)
            ("unknown tensor", lambda seq: update(seq, 1, [
                {"name": "no.such.tensor", "shape": [1], "dtype": "f32",
                 "data": b"\0\0\0\0"}])),
            ("wrong shape", lambda seq: update(seq, 1, [
                {"name": name, "shape": [numel], "dtype": "f32",
                 "data": b"\0" * (4 * numel)}])),
            ("non-finite weights", lambda seq: update(seq, 1, [
                {"name": name, "shape": shape, "dtype": "f32", "data": nan}])),
            ("not msgpack", lambda seq: struct.pack(">I", 3) + b"\xc1\xc1\xc1"),
            ("update for a key frame never sent",
             lambda seq: update(seq + 5, 0, [])),
        ]
        good_updates = []

        def script(i, sock, hello, ping):
            sock.sendall(welcome("fake-%d" % i) +
                         frame_bytes({"type": "pong", "t": ping["t"]}))
            while True:
                m = recv_msg(sock)
                if m["type"] == "bye":
                    sock.sendall(frame_bytes({"type": "bye"}))
                    return
                if m["type"] != "keyframe":
                    continue
                if i < len(bad):
                    sock.sendall(bad[i][1](m["seq"]))
                    sock.settimeout(10)
                    # The client must hang up on us.
                    while sock.recv(65536):
                        pass
                    return
                good_updates.append(m["seq"])
                sock.sendall(update(m["seq"], m["version"], []))

        fake = FakeServer(script)
        try:
            run = run_client(["--server", "127.0.0.1:%d" % fake.port,
                              "--input", CLIPS["clip72"], "--realtime",
                              "--queue-frames", "72", "--weights", WEIGHTS])
        finally:
            fake.close()
        self.assertEqual(run.rc, 0, run.stderr[-3000:])
        s = run.summary
        self.assertEqual(s["frames"], 72, run.stderr[-5000:])
        self.assertEqual(s["malformed"], len(bad), run.stderr[-3000:])
        self.assertEqual(s["sessions"], len(bad) + 1)
        self.assertEqual(s["reconnects"], len(bad))
        # Every good update is applied, except that the answer to the last
        # key frame may arrive after the last frame (nothing left to swap
        # it in before): a loaded machine shows it.
        self.assertIn(s["updates_applied"],
                      (len(good_updates), len(good_updates) - 1))
        self.assertGreaterEqual(len(good_updates), 2)
        self.assertEqual(s["version"], 0)  # nothing bad was ever applied
        reasons = " ".join(e.get("reason", "") for e in run.of("malformed"))
        for text in ("unknown tensor 'no.such.tensor'", "is [%d], the student"
                     % numel, "non-finite", "key frame"):
            self.assertIn(text, reasons)
        # Every hello: the weights' SHA-256, and after the first a resume of
        # the session before.
        digest = hashlib.sha256(open(WEIGHTS, "rb").read()).hexdigest()
        for i, h in enumerate(fake.hellos):
            self.assertEqual(h["student"], digest)
            self.assertEqual((h["width"], h["height"]), (W, H))
            if i == 0:
                self.assertNotIn("resume", h)
            else:
                self.assertEqual(h["resume"], {"session": "fake-%d" % (i - 1),
                                               "version": 0})

    def test_refusal_at_start_fails_fast(self):
        def script(i, sock, hello, ping):
            sock.sendall(frame_bytes({"type": "error", "code": "unauthorized",
                                      "message": "token please",
                                      "fatal": True}))

        fake = FakeServer(script)
        try:
            t0 = time.time()
            run = run_client(["--server", "127.0.0.1:%d" % fake.port,
                              "--input", CLIPS["clip48"], "--weights",
                              WEIGHTS])
        finally:
            fake.close()
        self.assertEqual(run.rc, 1)
        self.assertLess(time.time() - t0, 30)  # not the 60 s start deadline
        self.assertIn("refused the client: unauthorized: token please",
                      run.stderr)

    def test_garbage_at_start_is_retried_then_fails(self):
        def script(i, sock, hello, ping):
            sock.sendall(struct.pack(">I", 5) + b"\xdd\xff\xff\xff\xff")

        fake = FakeServer(script)
        cfg = client_config(connect_timeout_ms=1500)
        try:
            run = run_client(["--server", "127.0.0.1:%d" % fake.port,
                              "--input", CLIPS["clip48"], "--weights",
                              WEIGHTS], config=cfg)
        finally:
            fake.close()
        self.assertEqual(run.rc, 1)
        self.assertGreaterEqual(len(fake.hellos), 2)  # retried
        self.assertIn("no session with the server", run.stderr)
        self.assertIn("malformed", run.stderr)


def main():
    global CLIENT, SERVER, CLIP, CONFIG_DIR, FIXTURES, SANITIZED
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", required=True)
    ap.add_argument("--server", required=True)
    ap.add_argument("--clip", required=True)
    ap.add_argument("--config-dir", required=True)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--sanitized", action="store_true")
    args, rest = ap.parse_known_args()
    CLIENT, SERVER, CLIP = args.client, args.server, args.clip
    CONFIG_DIR = os.path.abspath(args.config_dir)
    FIXTURES = os.path.abspath(args.fixtures)
    SANITIZED = args.sanitized
    unittest.main(argv=[sys.argv[0]] + rest)


if __name__ == "__main__":
    main()
