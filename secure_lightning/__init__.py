"""secure_lightning: private deep learning for PyTorch Lightning with three-party replicated secret sharing.

`import secure_lightning` registers the Lightning strategy name "rss3pc":

    Trainer(strategy="rss3pc")  or  Trainer(strategy=secure_lightning.RSS3PC(reveal={...}))
"""
from .encoding import FixedPointOverflowError, FixedPointRangeError
from .launcher import NoData, PartyFailedError
from .reveal import RevealPolicy, RevealPolicyError
from .strategy import RSS3PC

__all__ = ["RSS3PC", "RevealPolicy", "RevealPolicyError", "NoData", "PartyFailedError", "FixedPointOverflowError",
           "FixedPointRangeError"]
