"""Protocol-aware layers: subclasses of the torch layers whose forward calls the secure functions explicitly.

Each keeps its torch parent's constructor, attributes and state_dict keys (so checkpoints and `isinstance` checks
still work) and falls back to the parent's forward on plain tensors. `nn.swap` turns torch layers into these (and
back) by changing the instance's class.
"""
from __future__ import annotations

from torch import nn

from .. import tensor as T
from ..tensor import SharedTensor
from ..tensor.batch_norm_fn import batch_norm_eval_scale
from ..tensor.dispatch import party_of
from ..tensor.shared import state_token


def _is_shared(*xs) -> bool:
    return any(isinstance(x, SharedTensor) for x in xs)


class SecureReLU(nn.ReLU):
    """ReLU keeping its sign bit for backward (tensor.activations.ReLUFn). `inplace` is ignored on shares."""

    def forward(self, input):
        return T.relu(input) if _is_shared(input) else super().forward(input)


class SecureMaxPool2d(nn.MaxPool2d):
    """Max pooling by comparison trees; backward through the shared one-hot selection (no int64 indices)."""

    def forward(self, input):
        if not _is_shared(input):
            return super().forward(input)
        return T.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


class SecureSequential(nn.Sequential):
    """nn.Sequential that runs a ReLU directly followed by a MaxPool2d as the pool, then the ReLU, on shares.

    relu(max S) = max relu(S) for every window S (ReLU is monotone; padding and ceil_mode windows hold at least one
    input), and so is the gradient: the element a window selects passes relu'(max). The ReLU's comparisons then run
    on the pooled elements, 1/k^2 of them for a k x k pool (LeNet-max's two ReLUs: 11 520 + 3 200 -> 2 880 + 800
    elements a sample, ~1.3 MB less communication). Both modules are still called, so their hooks run (a hook on
    the ReLU sees the pooled shape). Only these exact layer types are reordered; a slice of the Sequential is a
    SecureSequential too and reorders only pairs it holds. Plain values run in the written order."""

    def forward(self, input):
        mods, i = list(self._modules.values()), 0
        while i < len(mods):  # the input may become shared midway (a public input, shared weights)
            if type(mods[i]) is SecureReLU and i + 1 < len(mods) and type(mods[i + 1]) is SecureMaxPool2d \
                    and _is_shared(input):
                input, i = mods[i](mods[i + 1](input)), i + 2
            else:
                input, i = mods[i](input), i + 1
        return input


class _SecureBatchNorm:
    """Batch norm on shares: batch statistics with approx.rsqrt when training (running stats, shared buffers, are
    updated in place), running statistics in eval.

    Eval cache: in eval mode the per-channel factors inv = 1/sqrt(running_var + eps) and scale = weight * inv
    (tensor.batch_norm_fn.batch_norm_eval_scale: approx.rsqrt + one product on C values) are computed once and kept;
    later eval forwards cost one product on the activations, y = (x - running_mean) * scale + bias (3 rounds,
    16 bytes per element). running_mean and bias are read live (they enter linearly, for free). The cache is
    dropped by train(), and recomputed whenever its key changes: eps, and the state_token of running_var and
    weight (their identity, their share tensors' identity and write generations, their version counters), so an
    optimizer step, load_share_state_dict, copy_/add_ in place or a replaced parameter all refresh it. Every party
    takes the same decision (the key is a function of the operations run), so the parties stay in step.
    """

    def train(self, mode: bool = True):
        self.__dict__.pop("_secure_eval_scale", None)
        return super().train(mode)

    def _eval_scale(self, party):
        key = (float(self.eps), state_token(self.running_var), state_token(self.weight))
        cached = self.__dict__.get("_secure_eval_scale")
        if cached is not None and cached[0] == key:
            return cached[2]
        scale = batch_norm_eval_scale(self.running_var, self.weight, self.eps, party=party)
        # the key's ids stay valid while the cache holds the tensors they name
        self.__dict__["_secure_eval_scale"] = (key, (self.running_var, self.weight), scale)
        return scale

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
        eval_scale = None
        if (not use_batch and self.running_mean is not None and self.running_var is not None
                and input.shape[1] == self.running_var.shape[0]):
            eval_scale = self._eval_scale(party_of(input, self.weight, self.running_mean))
        return T.batch_norm(input, self.running_mean if track else None, self.running_var if track else None,
                            self.weight, self.bias, use_batch, factor, self.eps, eval_scale=eval_scale)


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

