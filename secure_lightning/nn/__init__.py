"""Secure nn: swap a model's layers for protocol-aware ones and share its parameters (`secure_module`), open or
checkpoint its state (`reveal_state_dict`, `share_state_dict` / `load_share_state_dict`), and go back to plaintext
(`restore_plain`)."""
from .layers import (  # noqa: F401
    SecureBatchNorm1d, SecureBatchNorm2d, SecureCrossEntropyLoss, SecureDropout, SecureDropout2d, SecureLogSoftmax,
    SecureMaxPool2d, SecureNLLLoss, SecureReLU, SecureSequential, SecureSoftmax,
)
from .swap import (  # noqa: F401
    SecureLayers, UnsupportedLayerError, load_share_state_dict, restore_plain, reveal_state_dict, secure_module,
    share_state_dict,
)

__all__ = ["secure_module", "reveal_state_dict", "share_state_dict", "load_share_state_dict", "restore_plain",
           "SecureLayers", "UnsupportedLayerError"]
