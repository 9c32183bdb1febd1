"""Protocol-aware layers: subclasses of the torch layers whose forward calls the secure functions explicitly.

Each keeps its torch parent's constructor, attributes and state_dict keys (so checkpoints and `isinstance` checks
still work) and falls back to the parent's forward on plain tensors. `nn.swap` turns torch layers into these (and
back) by changing the instance's class.
"""
from __future__ import annotations

from torch import nn

from .. import tensor as T
from ..tensor import SharedTensor


def _is_shared(*xs) -> bool:
    return any(isinstance(x, SharedTensor) for x in xs)


class SecureReLU(nn.ReLU):
    """ReLU keeping its sign bit for backward (tensor.autograd.ReLUFn). `inplace` is ignored on shares."""

    def forward(self, input):
        return T.relu(input) if _is_shared(input) else super().forward(input)


class SecureMaxPool2d(nn.MaxPool2d):
    """Max pooling by comparison trees; backward through the shared one-hot selection (no int64 indices)."""

    def forward(self, input):
        if not _is_shared(input):
            return super().forward(input)
        return T.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


class _SecureBatchNorm:
    """Batch norm on shares: batch statistics with approx.rsqrt when training (running stats, shared buffers, are
    updated in place), running statistics in eval."""

    def forward(self, input):
        if not _is_shared(input, self.weight, self.running_mean):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)  # a public counter (plain tensor)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return T.batch_norm(input, self.running_mean if track else None, self.running_var if track else None,
                            self.weight, self.bias, use_batch, factor, self.eps)


class SecureBatchNorm1d(_SecureBatchNorm, nn.BatchNorm1d):
    pass


class SecureBatchNorm2d(_SecureBatchNorm, nn.BatchNorm2d):
    pass


class SecureDropout(nn.Dropout):
    """Dropout with a public mask from party.prg_common (the same on every party, independent of the data)."""

    def forward(self, input):
        return T.dropout(input, self.p, self.training) if _is_shared(input) else super().forward(input)


class SecureDropout2d(nn.Dropout2d):
    """Channel dropout with a public mask from party.prg_common."""

    def forward(self, input):
        if not _is_shared(input):
            return super().forward(input)
        return T.dropout(input, self.p, self.training, feature=True)


class SecureCrossEntropyLoss(nn.CrossEntropyLoss):
    """Cross-entropy on shares: log_softmax forward, (softmax - onehot)/N backward. Labels may be public class
    indices, int64 SharedTensors (one-hot by secure equality) or class probabilities."""

    def forward(self, input, target):
        if not _is_shared(input, target):
            return super().forward(input, target)
        return T.cross_entropy(input, target, self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class SecureNLLLoss(nn.NLLLoss):
    def forward(self, input, target):
        if not _is_shared(input, target):
            return super().forward(input, target)
        return T.nll_loss(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class SecureSoftmax(nn.Softmax):
    def forward(self, input):
        return T.softmax(input, self.dim) if _is_shared(input) else super().forward(input)


class SecureLogSoftmax(nn.LogSoftmax):
    def forward(self, input):
        return T.log_softmax(input, self.dim) if _is_shared(input) else super().forward(input)

