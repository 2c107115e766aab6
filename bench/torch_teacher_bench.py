#!/usr/bin/python3
"""PyTorch half of bench/teacher_vs_pytorch.sh and bench/check_torchvision_teachers.sh.

Builds a torchvision segmentation model exactly as scripts/export-teacher.py
does before exporting it (its build_torchvision and calibrate_bn, imported,
with the same seed and export size), so it holds the same random weights as
the ONNX file the C executor runs.

  bench   [--model M] [--height H --width W] [--iters N] [--threads T]
          one warm-up and N timed torch.no_grad forward passes on a random
          normalised input; prints one human line and one JSON line with the
          keys of shadowtutor-teacher-bench (run_ms_median, peak_rss_mb, ...).
  image   --height H --width W --out IN.safetensors [--seed S]
          writes a random U8 [H,W,3] `image` for `shadowtutor-model teacher`.
  compare --model M --image IN.safetensors --logits OUT.safetensors
          runs the model on the image as `shadowtutor-model teacher --model`
          feeds it (RGB / 255, no mean or std) and compares the `logits` the
          C side wrote: PASS when max |C - PyTorch| <= 1e-4 x max |PyTorch|.
          Exit 0 on PASS, 1 on FAIL.

Run with the Debian PyTorch (/usr/bin/python3), never in CI. The reference
(for its safetensors reader and writer) is imported from ../shared/reference
beside the repository; ST_REF_DIR overrides that."""
import argparse
import importlib.util
import json
import os
import resource
import statistics
import sys
import time

_here = os.path.dirname(os.path.abspath(__file__))
_repo = os.path.dirname(_here)
_default_ref = os.path.join(_repo, '..', 'shared', 'reference')
sys.path.insert(0, os.path.abspath(os.environ.get('ST_REF_DIR', _default_ref)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import shadowtutor_ref as ref  # noqa: E402

DEFAULT_MODEL = 'lraspp_mobilenet_v3_large'
DEFAULT_ITERS = 5
DEFAULT_THREADS = 2
# The tolerance: relative to the largest logit magnitude.
COMPARE_REL_TOL = 1e-4
KIB_PER_MB = 1024.0  # ru_maxrss is in KiB on Linux; the C bench divides alike
U8_MAX = 255


def load_exporter():
    """scripts/export-teacher.py as a module (its name has a dash, so it
    cannot be imported by name); its builder is reused, not duplicated."""
    path = os.path.join(_repo, 'scripts', 'export-teacher.py')
    spec = importlib.util.spec_from_file_location('export_teacher', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_model(name, height, width, seed):
    """The model export-teacher.py writes for `--model name --height height
    --width width --seed seed` (random weights, BN calibrated at that size),
    in eval mode, returning the main output only."""
    exp = load_exporter()
    model = exp.build_torchvision(name, len(exp.VOC_CLASSES), False, None, seed)
    exp.calibrate_bn(model, height, width, seed)
    return exp.MainOutput(model).eval()


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MB


def cmd_bench(a):
    torch.set_num_threads(a.threads)
    model = build_model(a.model, a.height, a.width, a.seed)
    # A normalised image looks N(0,1)-like to the first layer, as in the C
    # bench; the values do not change the work done.
    gen = torch.Generator().manual_seed(a.seed)
    x = torch.randn(1, 3, a.height, a.width, generator=gen)
    times = []
    with torch.no_grad():
        out = model(x)  # warm-up: allocator and oneDNN/MKL primitive caches
        for _ in range(a.iters):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    rss = peak_rss_mb()
    print(f'pytorch {torch.__version__}, {a.model}, {a.height}x{a.width}, output '
          f'{list(out.shape)}, {a.iters} iterations, {a.threads} threads: run '
          f'median {med:.1f} ms (min {min(times):.1f}), peak RSS {rss:.1f} MB (includes building and '
          f'BN calibration)')
    print(json.dumps({
        'backend': 'pytorch-cpu', 'torch_version': torch.__version__,
        'model': a.model, 'height': a.height, 'width': a.width,
        'threads': a.threads, 'iters': a.iters,
        'run_ms_median': round(med, 3), 'run_ms_min': round(min(times), 3),
        'peak_rss_mb': round(rss, 1)}))


def cmd_image(a):
    rng = np.random.default_rng(a.seed)
    image = rng.integers(0, U8_MAX + 1, (a.height, a.width, 3), dtype=np.uint8)
    ref.write_safetensors(a.out, {'image': image})


def cmd_compare(a):
    torch.set_num_threads(a.threads)
    image = ref.read_safetensors(a.image)['image']
    height, width = image.shape[:2]
    model = build_model(a.model, height, width, a.seed)
    # `shadowtutor-model teacher --model` feeds RGB scaled to [0,1], NCHW,
    # with no mean or std.
    x = torch.from_numpy(np.ascontiguousarray(
        image.transpose(2, 0, 1)[None].astype(np.float32) / U8_MAX))
    with torch.no_grad():
        want = model(x).numpy()
    got = ref.read_safetensors(a.logits)['logits']
    got = np.asarray(got, dtype=np.float32)
    if got.shape != want.shape:
        print(f'FAIL {a.model}: C logits {list(got.shape)}, PyTorch {list(want.shape)}')
        return 1
    scale = float(np.abs(want).max())
    err = float(np.abs(got.astype(np.float64) - want).max())
    rel = err / scale if scale > 0 else float('inf')
    # A constant map would pass a loose check by accident: require spread.
    spread = float(want.std())
    ok = rel <= COMPARE_REL_TOL and spread > 0
    print(f'{"PASS" if ok else "FAIL"} {a.model} {height}x{width}: max |C - PyTorch| '
          f'{err:.3g}, max |PyTorch| {scale:.3g}, rel {rel:.3g} (tol {COMPARE_REL_TOL:g}), '
          f'logit std {spread:.3g}')
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    b = sub.add_parser('bench')
    b.add_argument('--model', default=DEFAULT_MODEL)
    b.add_argument('--height', type=int, default=360)
    b.add_argument('--width', type=int, default=640)
    b.add_argument('--iters', type=int, default=DEFAULT_ITERS,
                   help='timed runs after one warm-up')
    b.add_argument('--threads', type=int, default=DEFAULT_THREADS)
    b.add_argument('--seed', type=int, default=0, help='as export-teacher.py --seed')
    i = sub.add_parser('image')
    i.add_argument('--height', type=int, required=True)
    i.add_argument('--width', type=int, required=True)
    i.add_argument('--out', required=True)
    i.add_argument('--seed', type=int, default=0)
    c = sub.add_parser('compare')
    c.add_argument('--model', required=True)
    c.add_argument('--image', required=True)
    c.add_argument('--logits', required=True)
    c.add_argument('--threads', type=int, default=DEFAULT_THREADS)
    c.add_argument('--seed', type=int, default=0, help='as export-teacher.py --seed')
    a = ap.parse_args()
    for k in ('height', 'width', 'iters', 'threads'):
        if getattr(a, k, 1) < 1:
            ap.error(f'--{k} must be positive')
    if a.cmd == 'bench':
        cmd_bench(a)
    elif a.cmd == 'image':
        cmd_image(a)
    else:
        sys.exit(cmd_compare(a))


if __name__ == '__main__':
    main()
