"""A small PyTorch implementation of the method's reference cPreResNet20, for the interop tests.

Written from the paper (LCS, arXiv 2110.04252) and the reference code's documented
behaviour; it builds state dicts in the reference's key layout (``module.`` prefix of
DataParallel, line endpoints ``weight``/``weight1``, the quantized regime's convs
carrying their norm as ``.bn`` and their activation quantizer as ``.quantize_input``,
``select.indexes`` of the inactive channel selection) and computes the same function
in float64 at any alpha:

* lines: ``(1 - alpha) p + alpha p1`` for conv weights and norm scale/shift;
* unstructured: the block convs (shortcuts included) keep their weight at alpha minus
  its ``int((1 - topk) n)`` smallest magnitudes, ``topk = alpha``;
* structured: width ``0.25 + 0.75 alpha``; each conv keeps ``max(1, round(C w))`` output
  channels (the first conv's inputs and the classifier's outputs fixed) and reads as many
  inputs as it is given; the conv weights are shared by the line's ends; instance norm;
* quantized: block convs with their own norm after them, the block's input passed through
  ReLU first and that ReLU's output feeding both the convs and the shortcut; weight
  (batch-norm scale folded in) and input fake-quantized per tensor, affine, signed,
  range holding 0; bits from alpha in equal bins;
* group norm with ``min(C, 32)`` groups; the projection shortcut reads the block input
  (unstructured, structured); the classifier is a bias-free 1x1 conv after global pooling.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def fake_quant(x, bits, rmin, rmax):
    """Affine per-tensor fake quantization (LCS-SPEC section 3), any dtype; the gradient passes
    unchanged (straight-through estimator)."""
    rmin, rmax = min(float(rmin), 0.0), max(float(rmax), 0.0)
    if rmin == rmax == 0.0:
        return x - x.detach()
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = (rmax - rmin) / (qmax - qmin)
    zp = min(max(round(qmin - rmin / scale), qmin), qmax)
    q = torch.clamp(torch.round(x / scale) + zp, qmin, qmax)
    return x + ((q - zp) * scale - x).detach()


def bits_for(alpha, lo=3, hi=8):
    k = hi - lo + 1
    for i in range(k):
        if i / k <= alpha <= (i + 1) / k:
            return lo + i
    raise ValueError(alpha)


class Conv(nn.Module):
    """A conv whose weight may be a line, be pruned (top-k) or be sliced to a width."""

    def __init__(self, cin, cout, k, stride=1, line=False, sparse=False, first=False, last=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) * math.sqrt(2.0 / (cout * k * k)))
        if line:
            self.weight1 = nn.Parameter(torch.randn(cout, cin, k, k) * math.sqrt(2.0 / (cout * k * k)))
        self.stride, self.pad, self.sparse, self.first, self.last = stride, k // 2, sparse, first, last
        self.alpha, self.topk, self.width = 1.0, 1.0, None

    def current(self):
        w = self.weight
        if hasattr(self, "weight1"):
            w = (1 - self.alpha) * self.weight + self.alpha * self.weight1
        if self.sparse and self.topk < 1.0:
            zero = int((1 - self.topk) * w.numel())
            order = torch.argsort(w.detach().abs().flatten(), stable=True)
            mask = torch.ones(w.numel(), dtype=w.dtype)
            mask[order[:zero]] = 0
            w = w * mask.view_as(w)
        return w

    def forward(self, x, w=None):
        w = self.current() if w is None else w
        if self.width is not None:
            cout = w.shape[0] if self.last else max(1, round(w.shape[0] * self.width))
            w = w[:cout, :x.shape[1]]
        return F.conv2d(x, w, None, self.stride, self.pad)


class Norm(nn.Module):
    """Group (min(C, 32) groups), instance or batch norm, affine, optionally a line; sliced to its input."""

    def __init__(self, kind, c, line):
        super().__init__()
        self.kind = kind
        self.weight = nn.Parameter(1 + 0.2 * torch.randn(c))
        self.bias = nn.Parameter(0.2 * torch.randn(c))
        if line:
            self.weight1 = nn.Parameter(1 + 0.2 * torch.randn(c))
            self.bias1 = nn.Parameter(0.2 * torch.randn(c))
        if kind == "bn":
            self.register_buffer("running_mean", 0.1 * torch.randn(c))
            self.register_buffer("running_var", 0.5 + 1.5 * torch.rand(c))
            self.register_buffer("num_batches_tracked", torch.tensor(7))
        self.alpha = 1.0

    def affine(self):
        if hasattr(self, "weight1"):
            a = self.alpha
            return (1 - a) * self.weight + a * self.weight1, (1 - a) * self.bias + a * self.bias1
        return self.weight, self.bias

    def forward(self, x):
        g, b = self.affine()
        c = x.shape[1]
        g, b = g[:c], b[:c]
        if self.kind == "bn":
            return F.batch_norm(x, self.running_mean, self.running_var, g, b, False, 0.0, 1e-5)
        groups = c if self.kind == "in" else min(c, 32)
        return F.group_norm(x, groups, g, b, 1e-5)


class Quantizer(nn.Module):
    """Activation range (running min/max holding 0, momentum 0.1) and its fake quantization."""

    def __init__(self):
        super().__init__()
        self.register_buffer("running_min_value", torch.tensor(0.0))
        self.register_buffer("running_max_value", torch.tensor(0.0))
        self.register_buffer("iteration_count", torch.tensor(0, dtype=torch.int32))
        self.calibrating, self.bits = False, 8

    def forward(self, x):
        if self.calibrating:
            lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
            if self.iteration_count.item() > 0:
                lo = 0.9 * self.running_min_value.item() + 0.1 * lo
                hi = 0.9 * self.running_max_value.item() + 0.1 * hi
            self.running_min_value.fill_(lo)
            self.running_max_value.fill_(hi)
            self.iteration_count += 1
            return x  # not quantized while the range is being recorded (the warm-up)
        return fake_quant(x, self.bits, self.running_min_value.item(), self.running_max_value.item())


class QuantConvNorm(Conv):
    """A quantized block conv followed by its own norm (``.bn``), batch-norm scale folded before quantizing."""

    def __init__(self, cin, cout, k, stride, line, norm, norm_line):
        super().__init__(cin, cout, k, stride, line)
        self.bn = Norm(norm, cout, norm_line)
        self.quantize_input = Quantizer()

    def forward(self, x):
        w = self.current()
        scale = torch.ones(w.shape[0], dtype=w.dtype)
        if self.bn.kind == "bn":
            scale = self.bn.affine()[0] / torch.sqrt(self.bn.running_var + 1e-5)
        bits = self.quantize_input.bits
        ws = w * scale.view(-1, 1, 1, 1)
        wq = fake_quant(ws, bits, ws.min().item(), ws.max().item())
        y = F.conv2d(self.quantize_input(x), wq, None, self.stride, self.pad) / scale.view(1, -1, 1, 1)
        return self.bn(y)


class Select(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.indexes = nn.Parameter(torch.ones(c))


class Block(nn.Module):
    def __init__(self, cin, planes, stride, regime, line, norm):
        super().__init__()
        out = planes * 4
        conv_line = line and regime != "structured"
        norm_line = line and not (regime == "quantized" and norm == "bn")
        self.quantized = regime == "quantized"
        self.select = Select(cin)
        if self.quantized:
            def conv(a, b, k, s=1):
                return QuantConvNorm(a, b, k, s, conv_line, norm, norm_line)
        else:
            def conv(a, b, k, s=1):
                return Conv(a, b, k, s, conv_line, sparse=regime == "unstructured")
            self.bn1, self.bn2, self.bn3 = Norm(norm, cin, line), Norm(norm, planes, line), Norm(norm, planes, line)
        self.conv1, self.conv2, self.conv3 = conv(cin, planes, 1), conv(planes, planes, 3, stride), conv(planes, out, 1)
        self.downsample = nn.Sequential(conv(cin, out, 1, stride)) if stride != 1 or cin != out else None

    def forward(self, x):
        if self.quantized:  # the block's leading norms are no-ops and its in-place ReLU rewrites x
            a = F.relu(x)
            h = F.relu(self.conv1(a))
            h = F.relu(self.conv2(h))
            h = self.conv3(h)
            return h + (a if self.downsample is None else self.downsample(a))
        a = F.relu(self.bn1(x))
        h = self.conv3(F.relu(self.bn3(self.conv2(F.relu(self.bn2(self.conv1(a)))))))
        return h + (x if self.downsample is None else self.downsample(x))


class CPreResNet20(nn.Module):
    def __init__(self, regime="unstructured", subspace="line", norm="gn"):
        super().__init__()
        line = subspace == "line"
        conv_line = line and regime != "structured"
        head_line = line and not (regime == "quantized" and norm == "bn")
        self.conv1 = Conv(3, 16, 3, line=conv_line, first=True)
        cin, layers = 16, []
        for stage, planes in enumerate((16, 32, 64)):
            blocks = []
            for i in range(2):
                blocks.append(Block(cin, planes, 2 if stage and not i else 1, regime, line, norm))
                cin = planes * 4
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.bn = Norm(norm, 256, head_line)
        self.select = Select(256)
        self.fc = Conv(256, 10, 1, line=conv_line, last=True)
        self.regime = regime

    def set_alpha(self, alpha, bit_range=(3, 8), width_range=(0.25, 1.0)):
        for m in self.modules():
            if isinstance(m, (Conv, Norm)):
                m.alpha = alpha
            if isinstance(m, Conv) and m.sparse:
                m.topk = alpha
            if isinstance(m, Conv) and self.regime == "structured":
                m.width = width_range[0] + (width_range[1] - width_range[0]) * alpha
            if isinstance(m, Quantizer):
                m.bits = bits_for(alpha, *bit_range)
        return self

    def forward(self, x):
        h = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        h = F.relu(self.bn(h))
        return self.fc(h.mean(dim=(2, 3), keepdim=True)).flatten(1)

    def calibrate(self, x, alphas=(0.2, 0.6, 1.0)):
        """Record activation ranges as training would (quantized regime)."""
        qs = [m for m in self.modules() if isinstance(m, Quantizer)]
        for q in qs:
            q.calibrating = True
        with torch.no_grad():
            for a in alphas:
                self.set_alpha(a)(x)
        for q in qs:
            q.calibrating = False
        return self


def reference_state_dict(net):
    """The state dict as the reference code saves it: DataParallel's ``module.`` prefix, float32."""
    return {"module." + k: (v.float() if v.is_floating_point() else v) for k, v in net.state_dict().items()}


def build(regime, subspace, norm, seed=0, calibration=None):
    """A randomly initialised float32 reference network (calibrated on `calibration` when quantized)."""
    torch.manual_seed(seed)
    net = CPreResNet20(regime, subspace, norm).eval()
    if regime == "quantized":
        net.calibrate(calibration if calibration is not None else torch.randn(4, 3, 16, 16))
    return net
