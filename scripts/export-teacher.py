#!/usr/bin/python3
"""Builds a segmentation teacher in PyTorch and exports it to ONNX for
shadowtutor (see docs/teacher.md).

Run with the Debian PyTorch (apt-get install python3-torch
python3-torchvision python3-onnx):

  # the small built-in teacher (untrained, seeded; committed under config/)
  scripts/export-teacher.py --model small --out config/teacher-small.onnx \\
      --config config/teacher-small.json

  # any torchvision segmentation model, here with random weights
  scripts/export-teacher.py --model deeplabv3_resnet50 --height 360 --width 640 \\
      --out models/deeplabv3_resnet50.onnx --config models/deeplabv3_resnet50.json

--model takes 'small' or any name in
torchvision.models.list_models(module=torchvision.models.segmentation):
deeplabv3_mobilenet_v3_large, deeplabv3_resnet50, deeplabv3_resnet101,
fcn_resnet50, fcn_resnet101, lraspp_mobilenet_v3_large.

Weights are random (seeded with --seed, BatchNorm statistics calibrated
on random input: see calibrate_bn) unless --pretrained asks for
torchvision's published VOC-category weights (torchvision downloads them
into its hub cache when they are not there yet, so this needs network access
or a pre-filled cache) or --weights names a local state-dict file (.pth).
A model with random weights runs and can be timed, but its labels mean
nothing.

The export is for one fixed input size (shadowtutor plans its buffers for
it), opset 17 by default, with the input named 'input' and the output 'out'
(the model's main output; torchvision's auxiliary head is dropped).
Rerunning with the same arguments and the same PyTorch build writes the
same bytes.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn as nn

# Torchvision's segmentation weights are trained on the 20 Pascal VOC
# categories plus background, in this order (their meta['categories']).
VOC_CLASSES = [
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus',
    'car', 'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike',
    'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor',
]

# The paper's 9 student classes, background first so that label 0 is
# "nothing of interest" (the loss-weight boxes are grown around every
# non-background component).
STUDENT_CLASSES = [
    'background', 'person', 'bicycle', 'auto', 'bird', 'dog', 'horse',
    'elephant', 'giraffe',
]

# VOC class -> student class. 'auto' gathers car and bus (VOC has no truck);
# VOC has no elephant or giraffe, so those student classes receive no
# pixels from a VOC teacher. Every VOC class not listed maps to background.
VOC_TO_STUDENT = {
    'background': 'background', 'bicycle': 'bicycle', 'bird': 'bird',
    'bus': 'auto', 'car': 'auto', 'dog': 'dog', 'horse': 'horse',
    'person': 'person',
}

# Torchvision's segmentation models take RGB scaled to [0,1] and then
# normalised with the ImageNet statistics.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
PIXEL_SCALE = 1.0 / 255.0

DEFAULT_OPSET = 17
DEFAULT_HEIGHT = 360
DEFAULT_WIDTH = 640
DEFAULT_SEED = 0

# The small teacher: torchvision's lraspp_mobilenet_v3_large (dilated
# MobileNetV3-Large backbone, LR-ASPP head with 128 inner channels) at half
# width and with the reduced tail, so the ONNX file stays near 2 MB while
# keeping every op type of the full model.
SMALL_WIDTH_MULT = 0.5
SMALL_REDUCED_TAIL = True

# Layout of the JSON files written here.
JSON_INDENT = 2
JSON_LINE_CHARS = 100

# Spread of the random BN affine parameters set by calibrate_bn, and
# PyTorch's default BN momentum restored after it.
BN_GAMMA_SPREAD = 0.25
BN_BETA_SPREAD = 0.1
BN_DEFAULT_MOMENTUM = 0.1
# The calibration batch: samples, spread of their per-channel offsets and of
# their contrast (std 1 to 1 + CALIBRATION_CONTRAST).
CALIBRATION_BATCH = 4
CALIBRATION_OFFSET = 0.5
CALIBRATION_CONTRAST = 0.5
# Larger inputs are calibrated at a reduced size of about this many pixels.
CALIBRATION_MAX_PIXELS = 256 * 256


class MainOutput(nn.Module):
    """Torchvision's segmentation models return a dict ('out' and, for some,
    'aux'); ONNX export wants tensors, and only 'out' is the prediction."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)['out']


def calibrate_bn(model, height, width, seed):
    """Gives random weights usable statistics: every BatchNorm gets a random
    affine transform (gamma near 1, small beta) and running statistics
    measured on a seeded batch of random inputs of the export size.

    With torchvision's initialisation and the default running statistics
    (mean 0, var 1) the activations of a deep untrained net shrink or grow
    layer after layer (the small teacher's deepest features are ~1e-7);
    its output is then a constant map that tests cannot tell from a wrong
    one. Calibrated, each BN output has per-channel mean ~beta and std
    ~|gamma| on such input (N(0,1)-like, as a normalised image is), so the
    logits are O(1) and vary over the image. Deterministic for a seed."""
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in bns:
            n = bn.num_features
            bn.weight.copy_(1.0 + BN_GAMMA_SPREAD * torch.randn(n, generator=gen))
            bn.bias.copy_(BN_BETA_SPREAD * torch.randn(n, generator=gen))
            bn.reset_running_stats()
            # momentum None: the running statistics become the plain average
            # over the batches seen, here exactly those of the one batch.
            bn.momentum = None
        model.train()
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        # Each sample gets its own per-channel offset and contrast, so that
        # features pooled over the whole image (the ASPP pooling branch,
        # whose BN sees one value per sample) vary from sample to sample as
        # they do between real images; plain i.i.d. noise would average out
        # to nearly the same vector and give those BNs a tiny variance.
        n = CALIBRATION_BATCH
        offset = CALIBRATION_OFFSET * torch.randn(n, 3, 1, 1, generator=gen)
        contrast = 1.0 + CALIBRATION_CONTRAST * torch.rand(n, 1, 1, 1, generator=gen)
        # Statistics are per-channel averages, so a smaller image gives
        # nearly the same ones at a fraction of the cost (a ResNet-50 batch
        # at 360x640 takes minutes on one thread).
        shrink = min(1.0, math.sqrt(CALIBRATION_MAX_PIXELS / (height * width)))
        h, w = max(1, round(height * shrink)), max(1, round(width * shrink))
        x = torch.randn(n, 3, h, w, generator=gen) * contrast + offset
        # One thread: a multi-threaded reduction may sum in another order,
        # and the same seed should give the same bytes.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            model(x)
        finally:
            torch.set_num_threads(threads)
    for bn in bns:
        bn.momentum = BN_DEFAULT_MOMENTUM
    return model.eval()


def build_small(num_classes=len(VOC_CLASSES), seed=DEFAULT_SEED):
    """The small built-in teacher with seeded random (untrained) weights;
    call calibrate_bn before use."""
    from torchvision.models import mobilenetv3
    from torchvision.models.segmentation.lraspp import _lraspp_mobilenetv3
    torch.manual_seed(seed)
    setting, last_channel = mobilenetv3._mobilenet_v3_conf(
        'mobilenet_v3_large', width_mult=SMALL_WIDTH_MULT,
        reduced_tail=SMALL_REDUCED_TAIL, dilated=True)
    backbone = mobilenetv3.MobileNetV3(setting, last_channel)
    return _lraspp_mobilenetv3(backbone, num_classes)


def build_torchvision(name, num_classes, pretrained, weights_file, seed):
    import torchvision.models as tvm
    names = tvm.list_models(module=tvm.segmentation)
    if name not in names:
        sys.exit(f'export-teacher: unknown model {name!r}; use small or one of {", ".join(names)}')
    torch.manual_seed(seed)
    if pretrained:
        if num_classes != len(VOC_CLASSES):
            sys.exit('export-teacher: --pretrained weights have 21 VOC classes; drop --classes')
        weights = tvm.get_model_weights(name).DEFAULT
        try:
            return tvm.get_model(name, weights=weights)
        except OSError as e:  # urllib's URLError is an OSError
            cache = os.path.join(torch.hub.get_dir(), 'checkpoints')
            sys.exit(f'export-teacher: cannot get the pretrained weights ({e}); download '
                     f'{weights.url} into {cache}/ or load a local file with --weights FILE')
    # weights_backbone=None: nothing is fetched for a random model.
    if weights_file is None:
        return tvm.get_model(name, weights=None, weights_backbone=None,
                             num_classes=num_classes)
    state = torch.load(weights_file, map_location='cpu')
    if isinstance(state, dict) and 'model' in state and isinstance(state['model'], dict):
        state = state['model']
    aux = any(k.startswith('aux_classifier.') for k in state)
    model = tvm.get_model(name, weights=None, weights_backbone=None,
                          num_classes=num_classes, aux_loss=aux)
    model.load_state_dict(state)
    return model


def export(model, height, width, out_path, opset):
    """Exports model (eval mode, BN folded by the exporter) for a fixed
    1x3xHxW input; returns the output shape."""
    import onnx
    model = MainOutput(model).eval()
    x = torch.zeros(1, 3, height, width)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    torch.onnx.export(model, x, out_path, opset_version=opset,
                      input_names=['input'], output_names=['out'],
                      do_constant_folding=True)
    proto = onnx.load(out_path)
    onnx.checker.check_model(proto)
    return [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]


def format_json(value, indent=0):
    """JSON with one key per line but short lists and objects on one line,
    so configs stay readable and diffs small."""
    flat = json.dumps(value, separators=(', ', ': '))
    if not isinstance(value, (dict, list)) or (
            len(flat) + indent <= JSON_LINE_CHARS
            and not any(isinstance(v, (dict, list)) for v in
                        (value.values() if isinstance(value, dict) else value))):
        return flat
    pad = ' ' * (indent + JSON_INDENT)
    if isinstance(value, dict):
        items = [f'{pad}{json.dumps(k)}: {format_json(v, indent + JSON_INDENT)}'
                 for k, v in value.items()]
        return '{\n' + ',\n'.join(items) + '\n' + ' ' * indent + '}'
    items = [pad + format_json(v, indent + JSON_INDENT) for v in value]
    return '[\n' + ',\n'.join(items) + '\n' + ' ' * indent + ']'


def write_json(path, value):
    with open(path, 'w') as f:
        f.write(format_json(value) + '\n')


def teacher_config(model_path, config_path, height, width, num_classes):
    """The teacher config (schema in docs/teacher.md) for a model with the
    torchvision input convention and, when it has 21 classes, the VOC map."""
    rel = os.path.relpath(os.path.abspath(model_path),
                          os.path.dirname(os.path.abspath(config_path)))
    if num_classes == len(VOC_CLASSES):
        class_map = {str(i): VOC_TO_STUDENT[c] for i, c in enumerate(VOC_CLASSES)
                     if c in VOC_TO_STUDENT}
    else:
        # No known meaning for the classes: leave everything to background
        # and let the user write the map.
        class_map = {}
    return {
        'model': rel,
        'input': {
            'width': width,
            'height': height,
            'channel_order': 'rgb',
            'scale': PIXEL_SCALE,
            'mean': IMAGENET_MEAN,
            'std': IMAGENET_STD,
        },
        'output': 'out',
        'classes': num_classes,
        'class_map': class_map,
        'student_classes': STUDENT_CLASSES,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='small',
                    help="'small' or a torchvision segmentation model name (default: small)")
    ap.add_argument('--height', type=int, default=DEFAULT_HEIGHT)
    ap.add_argument('--width', type=int, default=DEFAULT_WIDTH)
    ap.add_argument('--classes', type=int, default=len(VOC_CLASSES),
                    help='output classes of a random model (default: 21, VOC)')
    ap.add_argument('--pretrained', action='store_true',
                    help="torchvision's published weights (may download)")
    ap.add_argument('--weights', help='a local state-dict file (.pth) to load')
    ap.add_argument('--seed', type=int, default=DEFAULT_SEED, help='seed of random weights')
    ap.add_argument('--opset', type=int, default=DEFAULT_OPSET)
    ap.add_argument('--out', required=True, help='ONNX file to write')
    ap.add_argument('--config', help='also write a teacher config JSON here')
    a = ap.parse_args()
    if a.pretrained and a.weights:
        sys.exit('export-teacher: --pretrained and --weights exclude each other')
    if a.model == 'small':
        if a.pretrained or a.weights:
            sys.exit('export-teacher: the small teacher has no trained weights')
        model = build_small(a.classes, a.seed)
        origin = f'random (seed {a.seed})'
    else:
        model = build_torchvision(a.model, a.classes, a.pretrained, a.weights, a.seed)
        origin = ('pretrained (torchvision DEFAULT)' if a.pretrained else
                  a.weights if a.weights else f'random (seed {a.seed})')
    if not (a.pretrained or a.weights):
        calibrate_bn(model, a.height, a.width, a.seed)
    shape = export(model, a.height, a.width, a.out, a.opset)
    params = sum(p.numel() for p in model.parameters())
    print(f'{a.out}: {a.model}, {params} parameters, weights {origin}, '
          f'input [1, 3, {a.height}, {a.width}], output {shape}, opset {a.opset}, '
          f'{os.path.getsize(a.out)} bytes')
    if a.config:
        cfg = teacher_config(a.out, a.config, a.height, a.width, shape[1])
        write_json(a.config, cfg)
        print(f'{a.config}: teacher config')


if __name__ == '__main__':
    main()
