#!/usr/bin/python3
"""shadowtutor-loadgen against the real server on loopback: a closed loop of
8 clients on a null-compute server, a paced shadowtutor run and an offload
run on a real (tiny-teacher) server. Asserts the report's numbers agree with
themselves and with the server's own /metrics.

    loadgen_test.py --loadgen BIN --server BIN --clip BIN --config-dir config
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

A = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp, **cfg):
        self.port, self.mport = free_port(), free_port()
        base = {"listen": {"host": "127.0.0.1", "port": self.port},
                "metrics": {"host": "127.0.0.1", "port": self.mport},
                "workers": 1, "threads_per_worker": 1,
                "teacher": os.path.join(A.config_dir, "teacher-small.json"),
                "student": {"config": os.path.join(A.config_dir, "student.json")},
                "log_level": "warn"}
        base.update(cfg)
        path = os.path.join(tmp, "server-%d.json" % self.port)
        with open(path, "w") as f:
            json.dump(base, f)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([A.server, "--config", path], env=env)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/readyz" %
                                            self.mport, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server not ready")

    def metric(self, name):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.mport,
                                    timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise KeyError(name)

    def stop(self):
        self.proc.terminate()
        self.assert_rc = self.proc.wait(60)


class LoadgenTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.clip = os.path.join(cls.tmp.name, "clip.mp4")
        subprocess.run([A.clip, "make", cls.clip, "--size", "64x48",
                        "--frames", "24", "--fps", "12", "--codec", "mpeg4"],
                       check=True)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_loadgen(self, srv, *args):
        out = os.path.join(self.tmp.name, "lg.json")
        r = subprocess.run([A.loadgen, "--server", "127.0.0.1:%d" % srv.port,
                            "--input", self.clip, "--metrics",
                            "127.0.0.1:%d" % srv.mport, "--json", out,
                            *args], capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as f:
            return json.load(f), r.stdout

    def test_closed_loop_null_compute(self):
        srv = Server(self.tmp.name, null_compute=True)
        try:
            rep, text = self.run_loadgen(srv, "--clients", "8", "--fps", "0",
                                         "--duration", "1.5", "--encoding",
                                         "raw")
            ph = rep["phases"][0]
            self.assertEqual(ph["clients"], 8)
            self.assertGreater(ph["answered"], 100)
            self.assertEqual(ph["sent"], ph["answered"])  # drained
            self.assertEqual(ph["dropped"], 0)
            self.assertEqual(ph["errors"], {})
            lat = ph["latency_ms"]
            self.assertTrue(0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"])
            # Every key frame carries one raw frame: 64x48x3 plus its header.
            self.assertGreater(ph["bytes_up"], ph["sent"] * 64 * 48 * 3)
            self.assertEqual(srv.metric("shadowtutor_updates_total"),
                             ph["answered"])
            self.assertIn("shadowtutor_keyframes_total", rep["server_metrics"])
            self.assertIn("answers/s", text)
        finally:
            srv.stop()
        self.assertEqual(srv.assert_rc, 0)

    def test_paced_shadowtutor_and_offload(self):
        srv = Server(self.tmp.name,
                     distill={"max_updates": 1, "bootstrap_full_keyframes": 1})
        try:
            rep, _ = self.run_loadgen(srv, "--clients", "2", "--fps", "24",
                                      "--duration", "2", "--concurrency-sweep",
                                      "1,2")
            self.assertEqual([p["clients"] for p in rep["phases"]], [1, 2])
            for ph in rep["phases"]:
                self.assertEqual(ph["errors"], {})
                self.assertGreater(ph["answered"], 0)
                # Key frames follow the server's strides (>= min_stride 8).
                self.assertLess(ph["sent"], ph["frames_played"] / 4)
                self.assertGreaterEqual(ph["mean_stride"], 8)
                self.assertEqual(ph["stale_updates"], 0)
                self.assertGreater(ph["server_stage_ms_mean"]["teacher"], 0)
            off, _ = self.run_loadgen(srv, "--mode", "offload", "--clients",
                                      "1", "--fps", "12", "--duration", "1.5",
                                      "--encoding", "jpeg")
            ph = off["phases"][0]
            self.assertEqual(off["mode"], "offload")
            self.assertEqual(ph["errors"], {})
            # Every frame is sent; answers are label maps of W*H bytes.
            self.assertEqual(ph["sent"], ph["frames_played"])
            self.assertGreaterEqual(ph["bytes_down"], ph["answered"] * 64 * 48)
        finally:
            srv.stop()
        self.assertEqual(srv.assert_rc, 0)

    def test_bad_arguments(self):
        for args in (["--server", "127.0.0.1"], ["--input", self.clip],
                     ["--server", "127.0.0.1:1", "--input", self.clip,
                      "--clients", "0"],
                     ["--server", "127.0.0.1:1", "--input", "/nonexistent.mp4"]):
            r = subprocess.run([A.loadgen, *args], capture_output=True,
                               text=True)
            self.assertEqual(r.returncode, 2, args)
            self.assertTrue(r.stderr.strip(), args)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    for k in ("loadgen", "server", "clip", "config-dir"):
        ap.add_argument("--" + k, required=True)
    A, rest = ap.parse_known_args()
    A.config_dir = os.path.abspath(A.config_dir)
    unittest.main(argv=[sys.argv[0]] + rest)
