"""The autograd Functions of the tensor layer, by their homes (kept so `secure_lightning.tensor.autograd` still
imports): sharing_io.py (share_tensor, reveal_tensor), activations.py (ReLU, dropout), pooling.py (max pooling),
losses.py (softmax family, cross-entropy, NLL), batch_norm_fn.py (batch norm)."""
from .activations import ReLUFn, dropout, public_uniform, relu  # noqa: F401
from .batch_norm_fn import BatchNormFn, batch_norm, batch_norm_eval_scale  # noqa: F401
from .losses import (  # noqa: F401
    CrossEntropyFn, LogSoftmaxFn, NLLLossFn, SoftmaxFn, class_weights, cross_entropy, log_softmax, nll_loss, softmax,
)
from .pooling import MaxPool2dFn, max_pool2d  # noqa: F401
from .shared import state_token  # noqa: F401
from .sharing_io import RevealFn, reveal_tensor, share_tensor  # noqa: F401
