"""Private training on sklearn's digits (8x8 images, 10 classes) through Trainer(strategy=RSS3PC()).

The same MLP (64 -> 32 -> ReLU -> 10, cross-entropy, SGD with momentum) is trained in plain float32 PyTorch with the
same initial weights and the same batches. The secure model's test accuracy (evaluated privately with trainer.test and
a torchmetrics Accuracy, and again in plaintext from the weights returned to the model owner) must be within 2 points
of the plaintext model's.
"""
from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from secure_lightning import RSS3PC

EPOCHS = 3
BATCH = 128


def digits_split(seed=0):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_train = int(0.8 * len(x))
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


class DigitsMLP(pl.LightningModule):
    def __init__(self, hidden=32, lr=0.1):
        super().__init__()
        self.save_hyperparameters()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, 10)
        import torchmetrics
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_digits_private_training_matches_plaintext_accuracy(tmp_path):
    (xtr, ytr), (xte, yte) = digits_split()
    torch.manual_seed(0)
    model = DigitsMLP()
    plain = copy.deepcopy(model)
    train_loader = DataLoader(TensorDataset(xtr, ytr), batch_size=BATCH, shuffle=False)

    opt = plain.configure_optimizers()
    plain.train()
    for _ in range(EPOCHS):
        for x, y in train_loader:
            opt.zero_grad()
            F.cross_entropy(plain(x), y).backward()
            opt.step()
    plain_acc = accuracy(plain, xte, yte)

    kw = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer = pl.Trainer(strategy=RSS3PC(), max_epochs=EPOCHS, **kw)
    trainer.fit(model, train_loader)
    secure_acc = accuracy(model, xte, yte)
    assert trainer.global_step == EPOCHS * len(train_loader)
    assert plain_acc > 0.85
    assert abs(secure_acc - plain_acc) <= 0.02, (secure_acc, plain_acc)

    # private inference on the test set: accuracy from torchmetrics on the data owner, published to all
    (res,) = pl.Trainer(strategy=RSS3PC(), **kw).test(model, DataLoader(TensorDataset(xte, yte), batch_size=120))
    assert abs(res["test_acc"] - secure_acc) <= 0.01, (res, secure_acc)
