#!/usr/bin/python3
"""PyTorch half of bench/vs_pytorch.sh: times the reference student.

Mode `infer` times torch.no_grad inference on one normalised RGB frame;
mode `distill` times one distillation step (zero_grad, forward, weighted
cross-entropy, backward, Adam step) with the partial optimiser of the
reference, or the full one with --full. Each mode is meant to run in its own
process so that the peak RSS it reports belongs to that mode alone.

Prints one human line and one JSON line whose keys match those of
`shadowtutor-model bench` (infer_ms_median / infer_peak_rss_mb, or
distill_step_ms_median / distill_peak_rss_mb).

Run with the Debian PyTorch (/usr/bin/python3), never in CI. The reference
is imported from ../shared/reference beside the repository; ST_REF_DIR
overrides that, as in tests/fixtures/_ref.py."""
import argparse
import json
import os
import resource
import statistics
import sys
import time

_here = os.path.dirname(os.path.abspath(__file__))
_default_ref = os.path.join(_here, '..', '..', 'shared', 'reference')
sys.path.insert(0, os.path.abspath(os.environ.get('ST_REF_DIR', _default_ref)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import shadowtutor_ref as ref  # noqa: E402

NUM_CLASSES = 9
DEFAULT_HEIGHT, DEFAULT_WIDTH = 720, 1280
DEFAULT_ITERS = 5
DEFAULT_THREADS = 2
# Same weight map statistics as the C bench: 30 % of the pixels weigh 5.
HEAVY_PIXEL_FRACTION, HEAVY_WEIGHT = 0.3, 5.0
KIB_PER_MB = 1024.0  # ru_maxrss is in KiB on Linux; the C tool divides alike


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MB


def timed_ms(fn, sync=lambda: None):
    """Wall time of fn(); `sync` waits for queued GPU work before and after,
    so asynchronous kernels are charged to the call that queued them."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('mode', choices=('infer', 'distill'))
    ap.add_argument('--height', type=int, default=DEFAULT_HEIGHT)
    ap.add_argument('--width', type=int, default=DEFAULT_WIDTH)
    ap.add_argument('--iters', type=int, default=DEFAULT_ITERS,
                    help='timed iterations after one warm-up')
    ap.add_argument('--threads', type=int, default=DEFAULT_THREADS)
    ap.add_argument('--full', action='store_true',
                    help='distill: train every parameter, not only the decoder tail')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--device', default='cpu', choices=('cpu', 'cuda'),
                    help='cuda: run on the GPU in fp32 with TF32 off, as the '
                         'C CUDA backend does')
    ap.add_argument('--cudnn-benchmark', action='store_true',
                    help='cuda: let cuDNN time every algorithm per shape '
                         '(torch.backends.cudnn.benchmark); PyTorch\'s default '
                         'is its heuristic')
    a = ap.parse_args()
    if a.iters < 1 or a.threads < 1 or a.height < 1 or a.width < 1:
        ap.error('--iters, --threads, --height and --width must be positive')

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    dev = torch.device(a.device)
    sync = lambda: None
    if a.device == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = a.cudnn_benchmark
        sync = torch.cuda.synchronize
    model = ref.Student(NUM_CLASSES).to(dev)
    frame = rng.integers(0, 256, (a.height, a.width, 3), dtype=np.uint8)
    x = ref.normalise(frame).to(dev)

    times = []
    if a.mode == 'infer':
        model.eval()  # no effect on this network; states the intent
        with torch.no_grad():
            model(x)  # warm-up: allocator and oneDNN/MKL primitive caches
            for _ in range(a.iters):
                times.append(timed_ms(lambda: model(x), sync))
    else:
        label = torch.from_numpy(
            rng.integers(0, NUM_CLASSES, (a.height, a.width)).astype(np.int64)).to(dev)
        weight = torch.from_numpy(np.where(
            rng.random((a.height, a.width)) < HEAVY_PIXEL_FRACTION,
            HEAVY_WEIGHT, 1.0).astype(np.float32)).to(dev)
        opt = ref.make_optimizer(model, full=a.full)

        def step():
            opt.zero_grad()
            ref.weighted_ce(model(x), label, weight).backward()
            opt.step()

        step()  # warm-up: also creates Adam's moment buffers
        for _ in range(a.iters):
            times.append(timed_ms(step, sync))

    med = statistics.median(times)
    rss = peak_rss_mb()
    key = 'infer' if a.mode == 'infer' else 'distill_step'
    rss_key = 'infer_peak_rss_mb' if a.mode == 'infer' else 'distill_peak_rss_mb'
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if a.mode == 'infer':
        what = f'{total} parameters: inference'
    else:
        what = f'{trainable} trainable of {total} parameters: distillation step'
    print(f'pytorch {torch.__version__}, {a.height}x{a.width}, {a.iters} '
          f'iterations, {a.threads} threads, {what} median {med:.1f} ms, '
          f'peak RSS {rss:.1f} MB')
    print(json.dumps({
        'backend': 'pytorch-' + a.device, 'torch_version': torch.__version__,
        'mode': a.mode, 'height': a.height, 'width': a.width,
        'iters': a.iters, 'threads': a.threads,
        key + '_ms_median': round(med, 3), rss_key: round(rss, 1),
        'full': bool(a.full), 'cudnn_benchmark': bool(a.cudnn_benchmark)}))


if __name__ == '__main__':
    main()
