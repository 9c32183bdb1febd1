"""Adam and AdamW with torch's defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-8) training through Trainer(strategy=RSS3PC())
against the same training in plain float32 PyTorch: same initial weights, same batches.

Lightning's LitAutoEncoder (its README's model: Linear-ReLU-Linear encoder and decoder, MSE, Adam(lr=1e-3)) on the
digits data (8x8 images, scaled to [0, 1]). Tolerances, from the issue that asked for them:
  - final training loss within 5% of plain;
  - every weight tensor's update within 25% of the plain update, ||dW_secure - dW_plain|| <= 0.25 ||dW_plain||.
Why they hold: each Adam step's update lr u is within ~0.3% of torch's where |g| >> 2^-20 (protocols.adaptive), and
the gradients themselves carry fixed-point noise of ~1 ulp (2^-20 ~ 1e-6); Adam normalises every gradient, so entries
whose gradients are at the noise level move by up to lr per step in a different direction than in plain training.
Those entries are few (the digits' border pixels are almost always 0, and exactly-zero inputs give exactly-zero
gradients), so the tensor norms stay within ~10% (measured values are printed). At frac_bits = 16 the noise floor is
16x higher: the loss still holds within 5%, the updates within 50%.
"""
from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from secure_lightning import RSS3PC
from tests.test_strategy_digits import digits_split

BATCH = 32
STEPS = 30


class LitAutoEncoder(pl.LightningModule):
    """Lightning's README model, on 8x8 inputs instead of 28x28."""

    def __init__(self, optimizer="Adam"):
        super().__init__()
        self.optimizer_name = optimizer
        self.encoder = nn.Sequential(nn.Linear(8 * 8, 64), nn.ReLU(), nn.Linear(64, 3))
        self.decoder = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 8 * 8))

    def training_step(self, batch, batch_idx):
        x, _ = batch
        x = x.view(x.size(0), -1)
        loss = F.mse_loss(self.decoder(self.encoder(x)), x)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return getattr(torch.optim, self.optimizer_name)(self.parameters(), lr=1e-3)


def plain_training(model, loader, steps):
    model = copy.deepcopy(model)
    opt = model.configure_optimizers()
    done = 0
    while done < steps:
        for batch in loader:
            opt.zero_grad()
            x = batch[0].view(batch[0].size(0), -1)
            F.mse_loss(model.decoder(model.encoder(x)), x).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return model


def full_loss(model, x) -> float:
    with torch.no_grad():
        return F.mse_loss(model.decoder(model.encoder(x)), x).item()


@pytest.mark.parametrize("optimizer,frac_bits,scale", [("Adam", 20, 1.0), ("Adam", 20, 16.0),
                                                     pytest.param("AdamW", 20, 1.0, marks=pytest.mark.slow),
                                                     pytest.param("Adam", 16, 1.0, marks=pytest.mark.slow)])
def test_lit_autoencoder_with_default_adam_matches_plain(tmp_path, optimizer, frac_bits, scale):
    """scale 16: the digits unnormalised (pixel values 0..16, as sklearn ships them)."""
    (x, y), _ = digits_split()
    x = x * scale
    x, y = x[:BATCH * STEPS], y[:BATCH * STEPS]
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    torch.manual_seed(0)
    model = LitAutoEncoder(optimizer)
    init = copy.deepcopy(model.state_dict())
    plain = plain_training(model, loader, STEPS)

    trainer = pl.Trainer(strategy=RSS3PC(frac_bits=frac_bits), max_steps=STEPS, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(model, loader)
    assert trainer.global_step == STEPS

    secure_sd, plain_sd = model.state_dict(), plain.state_dict()
    ratios = {}
    for k in init:
        d_plain, d_secure = plain_sd[k] - init[k], secure_sd[k] - init[k]
        ratios[k] = ((d_secure - d_plain).norm() / d_plain.norm()).item()
    l_plain, l_secure = full_loss(plain, x), full_loss(model, x)
    print(f"{optimizer}, f = {frac_bits}, inputs x{scale}: loss plain {l_plain:.5f} secure {l_secure:.5f}; update errors {ratios}")
    assert abs(l_secure - l_plain) <= 0.05 * l_plain, (l_secure, l_plain)
    # f = 16: gradients carry noise of 2^-16 ~ 1.5e-5, 16x more entries sit at the noise level and Adam normalises
    # them to full steps: measured update errors up to 0.43 (loss 4% off); f = 20 (the default): up to 0.10
    assert max(ratios.values()) <= (0.25 if frac_bits >= 20 else 0.5), ratios


# ---------------------------------------------------------------------------------------------------------------------
# Memory: Adam steps on Lightning's demo Net (1.2 M parameters) in bounded chunks

def _peak_rss_reset():
    with open("/proc/self/clear_refs", "w") as f:  # Linux: resets VmHWM (peak resident set) to the current RSS
        f.write("5")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _adam_steps_memory(party, steps, demo_net, chunk):
    import gc

    from pytorch_lightning.demos.boring_classes import Net

    from secure_lightning.nn import secure_module
    from secure_lightning.protocols.sharing import random_shares
    from secure_lightning.tensor import SharedTensor, optim_adaptive

    optim_adaptive.CHUNK, old_chunk = chunk, optim_adaptive.CHUNK
    torch.manual_seed(0)
    plain = Net() if demo_net else nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 64))
    model = secure_module(plain, party)
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    opt = torch.optim.Adam(params)
    gc.collect()
    base = _rss_kib("VmRSS")
    costs = []
    for _ in range(steps):
        for p in params:  # secret gradients of about 2^-12 (random shares scaled down to a fixed-point value)
            sh = random_shares(p.shape, party=party).map(lambda t: t >> 44)
            p.grad = SharedTensor(sh, party)
        gc.collect()
        _peak_rss_reset()
        before = _rss_kib("VmRSS")
        with party.comm.cost() as c:
            opt.step()
        costs.append((c.total.rounds, c.total.bytes))
        if not costs[1:]:
            first = before, _rss_kib("VmHWM")
    optim_adaptive.CHUNK = old_chunk
    return n, base, first[0], first[1], costs


def _check_memory(res, min_params):
    """The first step's peak over the resident set before it, less the state the step creates (exp_avg and
    exp_avg_sq: two share pairs, 32 bytes per parameter). Later steps reuse the first one's freed heap, so their
    resident-set peaks say nothing."""
    for n, base, before, peak, costs in res:
        assert n > min_params
        transient = (peak - before) * 1024 - 32 * n
        print(f"params {n}, rss before step {before / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, "
              f"transient {transient / n:.0f} B/param, costs {costs}")
        assert transient <= 200 * n, transient / n
        assert peak * 1024 < 1.5 * 2 ** 30


def test_adam_step_memory_is_bounded_by_the_chunk(parties):
    """The same mechanism at a size the default suite affords: a 295 K-parameter MLP in chunks of 2^13 elements."""
    _check_memory(parties.run(_adam_steps_memory, 1, False, 1 << 13), 250_000)


@pytest.mark.slow
def test_adam_step_memory_on_lightning_demo_net(parties):
    """Lightning's demo Net (1.2 M parameters), two Adam steps in the default chunks (2^16 elements): at most 200
    bytes per parameter per party of transient memory and the party under 1.5 GB (the step before this design
    needed 7.6 GB per party and was killed)."""
    _check_memory(parties.run(_adam_steps_memory, 2, True, 1 << 16), 1_000_000)


# ---------------------------------------------------------------------------------------------------------------------
# A small CNN with Adam's defaults reaches the plaintext accuracy

class DigitsCNN(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(128, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters())


@pytest.mark.slow
def test_small_cnn_with_default_adam_reaches_plain_accuracy(tmp_path):
    """Conv-ReLU-MaxPool-Linear on the digits, Adam() with every default, batch 32, 3 epochs: the secure model's test
    accuracy (from the weights returned to the model owner) within 2 points of the same plain training's."""
    (xtr, ytr), (xte, yte) = digits_split()
    xtr, xte = xtr.view(-1, 1, 8, 8), xte.view(-1, 1, 8, 8)
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=32, shuffle=False)
    torch.manual_seed(0)
    model = DigitsCNN()
    plain = copy.deepcopy(model)
    opt = plain.configure_optimizers()
    for _ in range(3):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(plain(xb), yb).backward()
            opt.step()
    trainer = pl.Trainer(strategy=RSS3PC(), max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                         default_root_dir=str(tmp_path))
    trainer.fit(model, loader)
    with torch.no_grad():
        acc_plain = (plain(xte).argmax(1) == yte).float().mean().item()
        acc_secure = (model(xte).argmax(1) == yte).float().mean().item()
    print(f"test accuracy: plain {acc_plain:.4f}, secure {acc_secure:.4f}")
    assert acc_plain > 0.85
    assert acc_secure >= acc_plain - 0.02, (acc_secure, acc_plain)
