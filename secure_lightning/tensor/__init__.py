"""SharedTensor: secret-shared tensors that work with torch autograd, nn and optim.

    x = share_tensor(data if party.rank == 0 else None, owner=0, party=party)
    y = model(x)                      # F.linear, F.conv2d, F.relu, ... on shares
    loss = F.cross_entropy(y, labels)
    loss.backward()                   # shared .grad on shared parameters
    reveal_tensor(loss)               # opened to all parties

Importing this package registers every handler (ops_*.py, attention and embedding included, and the autograd Functions in activations.py, pooling.py,
losses.py, batch_norm_fn.py) in the dispatch tables.
"""
from . import ops_factories, ops_linear, ops_nonlinear, ops_optim, ops_pointwise, ops_reduction, ops_shape  # noqa: F401
from . import ops_norm, ops_piecewise  # noqa: F401  (clamp, leaky_relu, abs, sign; norm, normalize: Functions)
from . import ops_layer_norm, ops_smooth  # noqa: F401  (layer_norm, rms_norm, gelu, silu: Functions)
from . import optim_adaptive  # noqa: F401  (routes torch.optim Adam/AdamW/RMSprop on shares)
from . import ops_attention, ops_embedding  # noqa: F401  (scaled_dot_product_attention, multi-head attention; embedding)
from .activations import dropout, relu  # noqa: F401
from .batch_norm_fn import batch_norm  # noqa: F401
from .losses import cross_entropy, log_softmax, nll_loss, softmax  # noqa: F401
from .pooling import max_pool2d  # noqa: F401
from .sharing_io import reveal_tensor, share_tensor  # noqa: F401
from .dispatch import UnsupportedOpError, supported_ops  # noqa: F401
from .shared import SharedTensor  # noqa: F401

__all__ = ["SharedTensor", "share_tensor", "reveal_tensor", "UnsupportedOpError", "supported_ops"]
