"""Private transformers (issue 14): the app's vit_tiny and text_encoder under strategy=rss3pc, and a user's own
nn.TransformerEncoder in a LightningModule under Trainer(strategy="rss3pc"), unchanged.

Each test first checks that secure_module takes every layer of the model it trains (a refusal fails the test with
the layer's name)."""
from __future__ import annotations

import copy
import json

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import secure_lightning  # noqa: F401  (registers strategy="rss3pc")
from datamodules.text import make_task
from models import TextEncoder, ViT
from tests.test_train_app import QUIET, run_cli


def secure_refusal(net: nn.Module) -> str | None:
    """Why secure_module would refuse `net` (the UnsupportedLayerError message), or None if it takes every layer."""
    from secure_lightning.nn.swap import SecureLayers, UnsupportedLayerError
    try:
        SecureLayers().check(net)
    except UnsupportedLayerError as e:
        return str(e)
    return None


def assert_secure(net: nn.Module) -> None:
    reason = secure_refusal(net)
    assert reason is None, reason


TINY_PRIVATE = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0", "data.batch_size=8", *QUIET]


def check_private_metrics(tmp_path, r):
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["train/loss"] == metrics["train/loss"]  # not NaN
    assert metrics["comm/fit/bytes"] > 0 and metrics["comm/fit/rounds"] > 0 and metrics["comm/test/bytes"] > 0
    return metrics


def test_app_trains_vit_tiny_privately(tmp_path):
    """`python train.py model=vit_tiny` (rss3pc, digits): 2 training batches, then validation and test."""
    assert_secure(ViT())
    r = run_cli("model=vit_tiny", *TINY_PRIVATE, f"hydra.run.dir={tmp_path}", timeout=900)
    check_private_metrics(tmp_path, r)


def test_app_trains_text_encoder_privately(tmp_path):
    """`python train.py model=text_encoder` (rss3pc, text_synth): int64 token ids shared by the data owner."""
    assert_secure(TextEncoder())
    r = run_cli("model=text_encoder", *TINY_PRIVATE, f"hydra.run.dir={tmp_path}", timeout=900)
    check_private_metrics(tmp_path, r)


# -- a user's own transformer in a LightningModule --------------------------------------------------------------------
VOCAB, SEQ, DIM = 16, 8, 16


class TokenTransformer(pl.LightningModule):
    """What a user would write: embedding, positions, nn.TransformerEncoder, mean pooling, linear head, SGD."""

    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(torch.randn(1, SEQ, DIM) * 0.02)
        layer = nn.TransformerEncoderLayer(DIM, 2, dim_feedforward=2 * DIM, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(DIM, 2)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens) + self.pos).mean(dim=1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def token_batches(n: int = 64, batch: int = 16) -> DataLoader:
    tokens, labels = make_task("order", n, VOCAB, SEQ, 2, seed=0)
    return DataLoader(TensorDataset(tokens, labels), batch_size=batch, shuffle=False)


def test_token_transformer_trains_in_plain_lightning(tmp_path):
    """The module of the private test below is a valid plain Lightning module (no secure code in it)."""
    torch.manual_seed(0)
    model = TokenTransformer()
    before = copy.deepcopy(model.state_dict())
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, token_batches())
    assert trainer.global_step == 4 and torch.isfinite(trainer.callback_metrics["train_loss"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_users_transformer_trains_under_rss3pc_like_plain(tmp_path):
    """Trainer(strategy="rss3pc") on the unchanged module: 4 SGD steps from the same weights on the same batches as
    a plain float32 run; the weights returned to the model owner stay within fixed-point error of the plain ones."""
    torch.manual_seed(0)
    model = TokenTransformer()
    plain = copy.deepcopy(model)
    opt = plain.configure_optimizers()
    for x, y in token_batches():
        opt.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        opt.step()

    trainer = pl.Trainer(strategy="rss3pc", accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=str(tmp_path))
    trainer.fit(model, token_batches())
    assert trainer.global_step == 4
    secure, want = model.state_dict(), plain.state_dict()
    assert secure.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(secure[k].float(), want[k], atol=2e-3, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


# -- the goal: private accuracy within 3 points of plain at the default settings ----------------------------
@pytest.mark.slow
@pytest.mark.parametrize("model, net", [("vit_tiny", ViT()), ("text_encoder", TextEncoder())])
def test_default_private_run_is_within_3_points_of_plain(tmp_path, model, net):
    assert_secure(net)
    plain = run_cli(f"model={model}", "strategy=plain", *QUIET, f"hydra.run.dir={tmp_path / 'plain'}")
    assert plain.returncode == 0, plain.stderr[-3000:]
    private = run_cli(f"model={model}", *QUIET, f"hydra.run.dir={tmp_path / 'private'}", timeout=7200)
    assert private.returncode == 0, private.stderr[-3000:]
    acc = {k: json.loads((tmp_path / k / "metrics.json").read_text())["test/acc"] for k in ("plain", "private")}
    assert abs(acc["private"] - acc["plain"]) <= 0.03, acc
