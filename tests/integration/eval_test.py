#!/usr/bin/python3
"""shadowtutor-eval and bench/eval.py on a synthetic clip with the
repository's tiny teacher: labels are deterministic and well formed, the
scorer agrees with an independent Python mIoU (the reference's definition)
on class maps written here, malformed inputs fail with one line, and a short
end-to-end evaluation writes a report whose figures agree with themselves.

    eval_test.py --eval BIN --build-dir DIR --clip BIN --config-dir config
"""
import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import unittest
import zlib

A = None
W, H, FRAMES = 64, 48, 24
HEADER = 32


def png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))


def write_png(path, pixels, w, h, colours=256, up_filter=True):
    """An 8-bit paletted PNG of class indices. With up_filter every row uses
    PNG filter 2 (Up): the first row against zeros, the others against the
    row above, which is what caught FFmpeg's reused-decoder bug."""
    raw = bytearray()
    prev = bytes(w)
    for y in range(h):
        row = pixels[y * w:(y + 1) * w]
        if up_filter:
            raw.append(2)
            raw.extend((row[x] - prev[x]) & 0xff for x in range(w))
        else:
            raw.append(0)
            raw.extend(row)
        prev = row
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0)
    plte = bytes(3 * colours)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) +
                png_chunk(b"PLTE", plte) +
                png_chunk(b"IDAT", zlib.compress(bytes(raw))) +
                png_chunk(b"IEND", b""))


def miou(pred, label, classes):
    """shared/reference/shadowtutor_ref.py miou(), on flat byte strings."""
    ious = []
    for k in range(classes):
        inter = union = 0
        for p, t in zip(pred, label):
            a, b = p == k, t == k
            inter += a and b
            union += a or b
        if union:
            ious.append(inter / union)
    return sum(ious) / len(ious) if ious else 1.0


def run(*cmd):
    return subprocess.run(list(cmd), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


class EvalTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.clip = os.path.join(cls.tmp.name, "clip.mkv")
        subprocess.run([A.clip, "make", cls.clip, "--size", "%dx%d" % (W, H),
                        "--frames", str(FRAMES), "--codec", "ffv1"],
                       check=True, stdout=subprocess.DEVNULL)
        cls.teacher = os.path.join(A.config_dir, "teacher-small.json")
        cls.labels = os.path.join(cls.tmp.name, "labels.bin")
        r = run(A.eval, "label", "--teacher", cls.teacher, "--input",
                cls.clip, "--out", cls.labels, "--threads", "1")
        assert r.returncode == 0, r.stderr
        cls.info = json.loads(r.stdout)
        with open(cls.labels, "rb") as f:
            cls.data = f.read()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def label(self, i):
        px = W * H
        return self.data[HEADER + i * px:HEADER + (i + 1) * px]

    def test_label_file(self):
        self.assertEqual(self.info, {"frames": FRAMES, "width": W,
                                     "height": H, "classes": 9})
        d = self.data
        self.assertEqual(d[:8], b"STLABELS")
        w, h, classes, zero, frames = struct.unpack("<IIIIQ", d[8:HEADER])
        self.assertEqual((w, h, classes, zero, frames), (W, H, 9, 0, FRAMES))
        self.assertEqual(len(d), HEADER + FRAMES * W * H)
        self.assertLess(max(d[HEADER:]), 9)
        # The clip moves, so the labels do too.
        self.assertNotEqual(self.label(0), self.label(FRAMES - 1))

    def test_label_is_deterministic_and_sized(self):
        again = os.path.join(self.tmp.name, "again.bin")
        r = run(A.eval, "label", "--teacher", self.teacher, "--input",
                self.clip, "--out", again, "--max-frames", "5", "--size",
                "32x24", "--threads", "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["frames"], 5)
        with open(again, "rb") as f:
            small = f.read()
        self.assertEqual(struct.unpack("<II", small[8:16]), (32, 24))
        self.assertEqual(len(small), HEADER + 5 * 32 * 24)
        r = run(A.eval, "label", "--teacher", self.teacher, "--input",
                self.clip, "--out", again, "--max-frames", "5", "--threads",
                "1")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(again, "rb") as f:
            self.assertEqual(f.read()[HEADER:],
                             self.data[HEADER:HEADER + 5 * W * H])

    def masks(self, name, frames, perturb):
        d = os.path.join(self.tmp.name, name)
        os.makedirs(d, exist_ok=True)
        expected = {}
        for i in frames:
            pred = perturb(i, bytearray(self.label(i)))
            write_png(os.path.join(d, "frame_%08d.png" % i), pred, W, H,
                      up_filter=i % 2 == 0)
            expected[i] = miou(pred, self.label(i), 9)
        return d, expected

    def test_score_matches_python(self):
        rng = random.Random(7)

        def perturb(i, p):
            # Frame i: a random block set to class i % 9, and noise.
            x0, y0 = rng.randrange(W // 2), rng.randrange(H // 2)
            for y in range(y0, y0 + H // 3):
                for x in range(x0, x0 + W // 3):
                    p[y * W + x] = i % 9
            for _ in range(50):
                p[rng.randrange(W * H)] = rng.randrange(9)
            return p

        frames = [i for i in range(FRAMES) if i != 5]  # frame 5: no map
        d, expected = self.masks("perturbed", frames, perturb)
        csv = os.path.join(self.tmp.name, "miou.csv")
        js = os.path.join(self.tmp.name, "score.json")
        r = run(A.eval, "score", "--labels", self.labels, "--masks", d,
                "--csv", csv, "--json", js)
        self.assertEqual(r.returncode, 0, r.stderr)
        s = json.loads(r.stdout)
        with open(js) as f:
            self.assertEqual(json.load(f), s)
        self.assertEqual((s["frames"], s["scored"], s["missing"]),
                         (FRAMES, FRAMES - 1, 1))
        with open(csv) as f:
            lines = f.read().split()
        self.assertEqual(lines[0], "frame,miou")
        got = {int(a): float(b) for a, b in (l.split(",") for l in lines[1:])}
        self.assertEqual(sorted(got), frames)
        for i in frames:
            self.assertAlmostEqual(got[i], expected[i], places=5)
        vals = sorted(expected.values())
        self.assertAlmostEqual(s["miou_mean"], sum(vals) / len(vals),
                               places=5)
        self.assertAlmostEqual(s["miou_min"], vals[0], places=5)
        self.assertLess(s["miou_mean"], 1.0)

    def test_perfect_maps_score_one(self):
        d, _ = self.masks("perfect", range(FRAMES), lambda i, p: p)
        r = run(A.eval, "score", "--labels", self.labels, "--masks", d)
        self.assertEqual(r.returncode, 0, r.stderr)
        s = json.loads(r.stdout)
        self.assertEqual((s["scored"], s["miou_mean"], s["miou_min"]),
                         (FRAMES, 1.0, 1.0))

    def test_bad_inputs_fail_with_one_line(self):
        d = os.path.join(self.tmp.name, "bad")
        os.makedirs(d)
        cases = []
        # A map of the wrong size.
        write_png(os.path.join(d, "frame_00000000.png"), bytes(32 * 24),
                  32, 24)
        cases.append(("32x24", self.labels, d))
        # A class the labels do not have.
        d2 = os.path.join(self.tmp.name, "bad2")
        os.makedirs(d2)
        write_png(os.path.join(d2, "frame_00000000.png"),
                  bytes([200]) * (W * H), W, H)
        cases.append(("a class >= 9", self.labels, d2))
        # Not a PNG.
        d3 = os.path.join(self.tmp.name, "bad3")
        os.makedirs(d3)
        with open(os.path.join(d3, "frame_00000000.png"), "wb") as f:
            f.write(b"not a png at all")
        cases.append(("not a decodable PNG", self.labels, d3))
        # No map at all.
        d4 = os.path.join(self.tmp.name, "empty")
        os.makedirs(d4)
        cases.append(("no class map", self.labels, d4))
        # A label file cut short, and one that is not a label file.
        cut = os.path.join(self.tmp.name, "cut.bin")
        with open(cut, "wb") as f:
            f.write(self.data[:HEADER + W * H + 10])
        dp, _ = self.masks("perfect2", range(FRAMES), lambda i, p: p)
        cases.append(("cut short at frame 1", cut, dp))
        junk = os.path.join(self.tmp.name, "junk.bin")
        with open(junk, "wb") as f:
            f.write(b"x" * 64)
        cases.append(("not a label file", junk, dp))
        huge = os.path.join(self.tmp.name, "huge.bin")
        with open(huge, "wb") as f:
            f.write(b"STLABELS" + struct.pack("<IIIIQ", 100000, 10, 9, 0, 1))
        cases.append(("bad header", huge, dp))
        for needle, labels, masks in cases:
            r = run(A.eval, "score", "--labels", labels, "--masks", masks)
            self.assertEqual(r.returncode, 1, (needle, r.stderr))
            self.assertIn(needle, r.stderr)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        for args in (["label", "--input", self.clip], ["score"],
                     ["label", "--teacher", self.teacher, "--input",
                      self.clip, "--out", "x", "--size", "0x5"],
                     ["frobnicate"]):
            r = run(A.eval, *args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
        r = run(A.eval, "label", "--teacher", self.teacher, "--input",
                os.path.join(self.tmp.name, "missing.mkv"), "--out",
                os.path.join(self.tmp.name, "x.bin"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("missing.mkv", r.stderr)

    def test_pretrain_learns_and_loads(self):
        out = os.path.join(self.tmp.name, "base.safetensors")
        r = run(A.eval, "pretrain", "--student",
                os.path.join(A.config_dir, "student.json"), "--teacher",
                self.teacher, "--input", self.clip, "--input", self.clip,
                "--max-frames", "8", "--epochs", "6", "--lr", "0.01",
                "--threads", "1", "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["frames"], 16)  # 8 per input
        epochs = [l for l in r.stderr.splitlines() if "epoch" in l]
        self.assertEqual(len(epochs), 6)
        loss = [float(l.split("mean loss ")[1].split(",")[0]) for l in epochs]
        self.assertLess(loss[-1], 0.7 * loss[0], loss)
        # A safetensors file: 8-byte header length, JSON header naming the
        # student's tensors as F32.
        with open(out, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        self.assertIn("out_conv3.weight", header)
        self.assertTrue(all(v["dtype"] == "F32" for k, v in header.items()
                            if k != "__metadata__"))
        # Teacher and student must agree on the classes.
        r = run(A.eval, "pretrain", "--student",
                os.path.join(A.config_dir, "student-person.json"),
                "--teacher", self.teacher, "--input", self.clip, "--out", out)
        self.assertEqual(r.returncode, 1)
        self.assertIn("classes", r.stderr)

    def test_eval_report(self):
        out = os.path.join(self.tmp.name, "eval")
        r = subprocess.run(
            ["/usr/bin/python3", A.eval_py, self.clip, "--frames", "16",
             "--variants", "partial-f16-delta-jpeg,partial-f32-raw",
             "--server-config", os.path.join(A.config_dir, "server.json"),
             "--offload-seconds", "2", "--offload-frames", "8",
             "--pretrain", self.clip, "--pretrain-epochs", "1",
             "--pretrain-size", "32x24",
             "--build-dir", A.build_dir, "--out", out],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            timeout=600)
        self.assertEqual(r.returncode, 0, r.stdout[-2000:] + r.stderr[-3000:])
        vdir = os.path.join(out, "clip")
        with open(os.path.join(vdir, "report.json")) as f:
            rep = json.load(f)
        self.assertEqual((rep["frames"], rep["width"], rep["height"]),
                         (16, W, H))
        names = [v["name"] for v in rep["variants"]]
        self.assertEqual(names, ["partial-f16-delta-jpeg", "partial-f32-raw"])
        raw, jpeg = rep["naive"]["raw"], rep["naive"]["jpeg"]
        # Naive offloading: a raw frame up and a label map down per frame,
        # plus a little msgpack and framing.
        self.assertGreaterEqual(raw["bytes_up_per_frame"], W * H * 3)
        self.assertLess(raw["bytes_up_per_frame"], W * H * 3 + 300)
        self.assertGreaterEqual(raw["bytes_down_per_frame"], W * H)
        self.assertLess(raw["bytes_down_per_frame"], W * H + 200)
        self.assertLess(jpeg["bytes_up_per_frame"], raw["bytes_up_per_frame"])
        self.assertGreater(raw["fps"], 0)
        for v in rep["variants"]:
            self.assertEqual((v["frames"], v["frames_scored"],
                              v["frames_missing"]), (16, 16, 0))
            self.assertTrue(0.0 <= v["miou_p10"] <= v["miou_mean"] <= 1.0)
            self.assertAlmostEqual(v["bytes_per_frame"],
                                   (v["bytes_up"] + v["bytes_down"]) / 16)
            self.assertAlmostEqual(v["vs_naive_raw"], v["bytes_per_frame"] /
                                   raw["bytes_per_frame"])
            self.assertGreaterEqual(v["keyframes"], 2)  # stride 8, 16 frames
            # The per-frame scores are those of the score tool.
            with open(os.path.join(vdir, v["name"], "miou.csv")) as f:
                vals = [float(l.split(",")[1]) for l in f.read().split()[1:]]
            self.assertEqual(len(vals), 16)
            self.assertAlmostEqual(sum(vals) / 16, v["miou_mean"], places=5)
            self.assertFalse(os.path.exists(os.path.join(vdir, v["name"],
                                                         "masks")))
        by = {v["name"]: v for v in rep["variants"]}
        # Raw key frames cost more upstream than JPEG ones.
        self.assertGreater(by["partial-f32-raw"]["bytes_up"],
                           by["partial-f16-delta-jpeg"]["bytes_up"])
        self.assertIn("targets", rep)
        # The base student came from --pretrain and reached both sides: the
        # server sent no model (the client had the weights).
        self.assertEqual(rep["pretrain"]["frames"], FRAMES)
        self.assertTrue(os.path.exists(rep["weights"]))
        for v in rep["variants"]:
            with open(os.path.join(vdir, v["name"], "stats.jsonl")) as f:
                summary = [json.loads(l) for l in f][-1]
            self.assertEqual(summary["models_adopted"], 0)
        with open(os.path.join(vdir, "report.md")) as f:
            md = f.read()
        for n in names + ["Naive offloading", "Targets"]:
            self.assertIn(n, md)
        for p in rep["plots"]:
            with open(os.path.join(vdir, p), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertEqual(len(rep["plots"]), 3)


def main():
    global A
    p = argparse.ArgumentParser()
    p.add_argument("--eval", required=True)
    p.add_argument("--eval-py", required=True)
    p.add_argument("--build-dir", required=True)
    p.add_argument("--clip", required=True)
    p.add_argument("--config-dir", required=True)
    A, rest = p.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
