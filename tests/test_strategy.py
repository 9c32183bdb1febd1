"""The RSS3PC Lightning strategy, end to end: every Trainer call below starts three real party processes.

Tolerances (secure training vs the same training in float32 PyTorch, same initial weights, same batches):
  - Linear + MSE + SGD(momentum) + StepLR, 6 steps: |w_secure - w_plain| <= 2e-3. Every fixed-point product is
    truncated (<= 1 ulp = 2^-20 ~ 1e-6) and each step multiplies these by lr-scaled sums over a batch of 8;
    measured errors are ~1e-5.
  - Conv net (conv, functional ReLU, max pooling, dropout, log-softmax + NLL) + Adam(lr=1e-2, betas=(0.9, 0.99),
    eps=0.1), 4 steps: <= 2e-3. Adam's update is within ~0.3% of torch's per step (protocols.adaptive; see
    ConvNet.configure_optimizers for the choice of eps); measured errors ~1e-4 (updates ~2.5e-2).
Dropout masks are drawn from the parties' common PRG (public, independent of the data), so the secure model opens its
masks to the data owner, which writes them to a file; the plain reference replays them.
Runtime: ~9 Trainer launches (each starts 3 processes); see the report for timings on the 2-core machine.
"""
from __future__ import annotations

import copy
import os
import time

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from secure_lightning import PartyFailedError, RevealPolicy, RevealPolicyError, RSS3PC
from secure_lightning.strategy import party_path

TIMEOUT = 60.0


def trainer_kwargs(tmp_path, **kw):
    base = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    base.update(kw)
    return base


# ---------------------------------------------------------------------------------------------------------------------
# Data: public test inputs from a seeded torch.Generator (test code only)

def regression_data(n=32, d_in=4, d_out=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    w = torch.randn(d_in, d_out, generator=g)
    y = x @ w + 0.1 * torch.randn(n, d_out, generator=g)
    return x, y


class OwnerOnlyDataset(Dataset):
    """Fails when an item is read in a party process other than the data owner (LOCAL_RANK 0). The launching
    process (no LOCAL_RANK) may read it for the plain reference. Its length is public."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        rank = os.environ.get("LOCAL_RANK")
        if rank not in (None, "0"):
            raise RuntimeError(f"dataset item read in party {rank}: only the data owner may touch the data")
        return self.x[i], self.y[i]


class LinearRegressor(pl.LightningModule):
    """Linear model, MSE loss, SGD with momentum, StepLR stepping every optimizer step; data from its own hook."""

    def __init__(self, d_in=4, d_out=2, lr=0.1, n=32, batch_size=8, seed=0, metric=False):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(d_in, d_out)
        if metric:
            import torchmetrics
            self.val_mae = torchmetrics.MeanAbsoluteError()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        pred = self(x)
        self.log("val_loss", F.mse_loss(pred, y))
        if self.hparams.metric:
            self.val_mae.update(pred, y)  # update() path: torchmetrics would all_gather in compute
            self.log("val_mae", self.val_mae)

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self):
        x, y = regression_data(self.hparams.n, self.hparams.d_in, self.hparams.d_out, self.hparams.seed)
        return DataLoader(OwnerOnlyDataset(x, y), batch_size=self.hparams.batch_size, shuffle=False)


def plain_linear_training(model: LinearRegressor, steps: int, accumulate: int = 1, clip_value=None) -> dict:
    """The same training in plain float32 PyTorch: same initial weights, same batches, same optimizer/scheduler, and
    Lightning's order: loss / accumulate per batch, then clip by value, step, scheduler step, zero_grad."""
    model = copy.deepcopy(model)
    cfg = model.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    loader = model.train_dataloader()
    done, seen = 0, 0
    opt.zero_grad()
    while done < steps:
        for x, y in loader:
            (F.mse_loss(model(x), y) / accumulate).backward()
            seen += 1
            if seen % accumulate:
                continue
            if clip_value is not None:
                torch.nn.utils.clip_grad_value_(model.parameters(), clip_value)
            opt.step()
            sched.step()
            opt.zero_grad()
            done += 1
            if done == steps:
                break
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_close_state(got: dict, want: dict, atol: float):
    assert got.keys() == want.keys()
    for k in want:
        err = (got[k] - want[k]).abs().max().item()
        assert err <= atol, f"{k}: max error {err:.3g} > {atol}"


# ---------------------------------------------------------------------------------------------------------------------
# Conv net with dropout, Adam

def image_data(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


class ConvNet(pl.LightningModule):
    """conv 3x3 -> functional ReLU -> max pool 2 -> dropout -> linear -> log-softmax -> NLL; Adam.

    With `mask_file`, the dropout mask is drawn by F.dropout on a tensor of ones (the same draw F.dropout(h) would
    make), opened to the data owner under the policy name "dropout_mask" and appended to `mask_file`, so that a
    plain run can replay it. The mask is public randomness: opening it reveals nothing about data or weights."""

    def __init__(self, p=0.5, lr=1e-2, eps=0.1, mask_file=None):
        super().__init__()
        self.save_hyperparameters()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 3 * 3, 10)
        self.replay_masks = None  # plain reference: list of masks to use in order

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv(x)), 2)
        if self.training and self.hparams.p > 0:
            if self.replay_masks is not None:
                h = h * self.replay_masks.pop(0)
            else:
                mask = F.dropout(torch.ones_like(h), self.hparams.p, training=True)
                h = h * mask
                if self.hparams.mask_file is not None:
                    opened = self.trainer.strategy.reveal(mask, "masks", "dropout_mask")
                    if opened is not None:
                        masks = torch.load(self.hparams.mask_file) if os.path.exists(self.hparams.mask_file) else []
                        torch.save(masks + [opened.cpu()], self.hparams.mask_file)
        return F.log_softmax(self.fc(h.flatten(1)), dim=1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.nll_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        # A large eps keeps this comparison element-wise tight: with eps = 1e-8, entries whose gradients are at the
        # fixed-point noise level (~1e-6) would move by up to lr per step in plain Adam's normalised direction, not
        # the same one (Adam's defaults are tested with norm-wise tolerances in test_adam_training.py).
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, betas=(0.9, 0.99), eps=self.hparams.eps)


def plain_conv_training(model: ConvNet, loader, steps: int, masks) -> dict:
    model = copy.deepcopy(model)
    model.replay_masks = list(masks)
    model.train()
    opt = model.configure_optimizers()
    done = 0
    while done < steps:
        for x, y in loader:
            opt.zero_grad()
            F.nll_loss(model(x), y).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------------
# Tests that start no process

def test_registry_and_refusals_at_trainer_init():
    t = pl.Trainer(strategy="rss3pc", accelerator="cpu", logger=False)
    assert isinstance(t.strategy, RSS3PC) and t.strategy.world_size == 3 and t.num_devices == 3
    with pytest.raises(ValueError, match="32-true"):
        pl.Trainer(strategy=RSS3PC(), accelerator="cpu", precision="16-mixed", logger=False)
    with pytest.raises(ValueError, match="exactly three parties"):
        pl.Trainer(strategy="rss3pc", accelerator="cpu", num_nodes=2, logger=False)
    with pytest.raises(ValueError, match="three party processes"):
        pl.Trainer(strategy="rss3pc", accelerator="cpu", devices=2, logger=False)
    with pytest.raises(ValueError, match="one party per host"):
        pl.Trainer(strategy="rss3pc", accelerator="cpu", devices=2, num_nodes=3, logger=False)


class IterStep(LinearRegressor):
    def training_step(self, dataloader_iter):
        return super().training_step(next(dataloader_iter), 0)


def test_clip_by_norm_and_dataloader_iter_refused_before_launch(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(NotImplementedError, match="gradient_clip_algorithm='value'"):
        pl.Trainer(strategy=RSS3PC(), gradient_clip_val=1.0, **trainer_kwargs(tmp_path)).fit(LinearRegressor())
    with pytest.raises(NotImplementedError, match="dataloader_iter"):
        pl.Trainer(strategy=RSS3PC(), **trainer_kwargs(tmp_path)).fit(IterStep())
    assert time.monotonic() - t0 < 5  # refused in the launching process, no party started


def test_reveal_policy_rules():
    p = RevealPolicy.build({"val_acc": 1, "metrics": None}, data_owner=2, model_owner=1)
    assert p.recipient("loss", "train_loss") == "all"
    assert p.recipient("metrics", "val_acc") == 1
    assert p.recipient("predictions") == 2 and p.recipient("weights") == 1
    with pytest.raises(RevealPolicyError, match="does not allow"):
        p.check("metrics", "train_acc")
    with pytest.raises(RevealPolicyError, match="opened to all parties"):
        p.check("metrics", "val_acc", need_all=True)
    assert RevealPolicy.build(None, reveal_weights=False).recipient("weights") is None


# ---------------------------------------------------------------------------------------------------------------------
# Training through the strategy

def test_linear_sgd_steplr_accumulate_clip_matches_plain_and_only_owner_reads_data(tmp_path):
    """Trainer(strategy="rss3pc"), accumulate_grad_batches=2, clipping by value; data from the module's own hook
    over a dataset that fails outside the data owner."""
    torch.manual_seed(0)
    model = LinearRegressor()
    want = plain_linear_training(model, steps=6, accumulate=2, clip_value=0.3)
    unclipped = plain_linear_training(model, steps=6, accumulate=2)
    assert max((want[k] - unclipped[k]).abs().max().item() for k in want) > 0.05  # clipping matters here
    logger = pl.loggers.CSVLogger(str(tmp_path), name="csv")
    trainer = pl.Trainer(strategy="rss3pc", max_steps=6, log_every_n_steps=1, accumulate_grad_batches=2,
                         gradient_clip_val=0.3, gradient_clip_algorithm="value",
                         **trainer_kwargs(tmp_path, logger=logger))
    strategy = trainer.strategy
    trainer.fit(model)
    got = {k: v.detach() for k, v in model.state_dict().items()}
    assert_close_state(got, want, atol=2e-3)
    assert trainer.global_step == 6
    assert "train_loss" in trainer.callback_metrics
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().count("\n") >= 6
    # every opening: the logged loss to all at each batch, the weights to the model owner at the end
    ops = strategy.openings
    loss_ops = [o for o in ops if o.what == "loss"]
    assert len(loss_ops) == 12 and all(o.to == "all" and o.name == "train_loss" and o.shape == () for o in loss_ops)
    weight_ops = [o for o in ops if o.what == "weights"]
    assert weight_ops and all(o.to == "party 0" for o in weight_ops)
    assert sum(int(torch.tensor(o.shape).prod()) for o in weight_ops) == 4 * 2 + 2
    # and the overflow guard's checks (one count of out-of-range samples per checked op, all 0 here)
    guard_ops = [o for o in ops if o.kind == "guard"]
    assert guard_ops and all(o.what == "guard" and o.name.startswith("guard/") and o.shape == () and o.to == "all"
                             for o in guard_ops)
    assert len(ops) == len(loss_ops) + len(weight_ops) + len(guard_ops)
    report = strategy.opening_report()
    assert "train_loss" in report and "OUTSIDE" not in report
    audits = strategy.party_audits
    assert sorted(audits) == [0, 1, 2] and len(audits[0]) == len(audits[1]) == len(audits[2]) == len(ops)
    # communication of the stage, reported in the launching process: every party ran the same rounds
    comm = strategy.communication_summary()
    assert comm["rounds"] > 0 and comm["bytes"] > 0 and comm["bytes_all_parties"] > comm["bytes"]
    assert len({c["rounds"] for c in strategy._party_comm.values()}) == 1


def test_convnet_adam_dropout_matches_plain_and_predict(tmp_path):
    """Trainer(strategy=RSS3PC(...)) with non-default roles (data owner P1, model owner P2); the policy also lets the
    data owner see the (public) dropout masks."""
    torch.manual_seed(1)
    x, y = image_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)
    mask_file = str(tmp_path / "masks.pt")
    model = ConvNet(p=0.5, mask_file=mask_file)
    init = copy.deepcopy(model)
    strategy = RSS3PC(timeout=TIMEOUT, data_owner=1, model_owner=2, reveal={"dropout_mask": "data_owner"})
    trainer = pl.Trainer(strategy=strategy, max_steps=4, **trainer_kwargs(tmp_path))
    trainer.fit(model, loader)
    masks = torch.load(mask_file)
    assert len(masks) == 4 and all(set(m.unique().tolist()) <= {0.0, 2.0} for m in masks)
    want = plain_conv_training(init, loader, 4, masks)
    got = {k: v.detach() for k, v in model.state_dict().items()}
    assert_close_state(got, want, atol=2e-3)
    assert any(o.name == "dropout_mask" and o.to == "party 1" for o in strategy.openings)
    assert {o.to for o in strategy.openings if o.what == "weights"} == {"party 2"}

    # predictions are opened to the data owner and come back to the launching process
    model.hparams.mask_file = None
    pred_trainer = pl.Trainer(strategy="rss3pc", **trainer_kwargs(tmp_path))
    preds = pred_trainer.predict(model, DataLoader(TensorDataset(x, y), batch_size=8))
    model.eval()
    with torch.no_grad():
        want_pred = model(x)
    got_pred = torch.cat(preds)
    assert got_pred.shape == want_pred.shape
    assert (got_pred - want_pred).abs().max().item() < 5e-2  # log-softmax approximations (exp, log)


def test_checkpoint_resume_export_validate(tmp_path):
    """Per-party share checkpoints (atomic), plaintext export, exact resume, then validate with torchmetrics."""
    torch.manual_seed(2)
    model = LinearRegressor(metric=True)
    init = copy.deepcopy(model)
    ckpt_dir = tmp_path / "ckpt"
    cb = pl.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), filename="{step}", every_n_train_steps=2,
                                      save_top_k=-1, save_last=True)
    # a monitored checkpoint decides through strategy.reduce_boolean_decision (an all-reduce over the parties)
    best = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "best"), monitor="train_loss", mode="min",
                                        save_top_k=1, every_n_train_steps=1)
    trainer = pl.Trainer(strategy=RSS3PC(timeout=TIMEOUT, export_plaintext=True), max_steps=4, callbacks=[cb, best],
                         **trainer_kwargs(tmp_path, enable_checkpointing=True))
    trainer.fit(model)
    assert best.best_model_path and os.path.exists(party_path(best.best_model_path, 2))
    assert best.best_model_score is not None
    w4 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    step4 = ckpt_dir / "step=4.ckpt"
    assert cb.last_model_path and os.path.exists(cb.last_model_path)
    for name in ("step=2.ckpt", "step=4.ckpt", "last.ckpt"):
        base = ckpt_dir / name
        assert base.exists() and (ckpt_dir / (name + ".plain")).exists()
        public_sd = torch.load(base, weights_only=True)["state_dict"]  # the public manifest holds no shares:
        assert all(v.numel() == 0 for v in public_sd.values())    # empty tensors and a note for plain torch
        assert any(k.startswith("THIS IS A secure_lightning SHARE CHECKPOINT") for k in public_sd)
        for r in range(3):
            assert os.path.exists(party_path(base, r))
    assert not [f for f in os.listdir(ckpt_dir) if ".tmp" in f]
    # the three share files reconstruct the returned weights exactly; the plaintext export loads into the plain model
    parts = [torch.load(party_path(step4, r), weights_only=False)["state_dict"] for r in range(3)]
    for k, v in w4.items():
        ring = parts[0][k]["cur"] + parts[1][k]["cur"] + parts[2][k]["cur"]
        assert torch.equal((ring.double() / 2 ** 20).float(), v), k
    plain = LinearRegressor(metric=True)
    plain.load_state_dict(torch.load(str(step4) + ".plain", weights_only=False)["state_dict"])
    assert_close_state(dict(plain.state_dict()), w4, atol=0)

    # resume from "last" (= step 4) into a differently initialised model: shares (weights, momentum) come from the
    # files; Lightning's "last" lookup also lists last.ckpt.party<r> and last.ckpt.plain, which resolve to last.ckpt
    torch.manual_seed(3)
    resumed = LinearRegressor(metric=True)
    cb2 = pl.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), filename="{step}", every_n_train_steps=2,
                                       save_top_k=-1, save_last=True)
    trainer2 = pl.Trainer(strategy=RSS3PC(timeout=TIMEOUT), max_steps=6, callbacks=[cb2],
                          **trainer_kwargs(tmp_path, enable_checkpointing=True))
    trainer2.fit(resumed, ckpt_path="last")
    assert trainer2.global_step == 6
    assert_close_state(dict(resumed.state_dict()), plain_linear_training(init, steps=6), atol=2e-3)

    # validate: logged loss and a torchmetrics metric (inputs opened to the data owner, result published)
    x, y = regression_data()
    val_loader = DataLoader(TensorDataset(x, y), batch_size=16)
    val_trainer = pl.Trainer(strategy=RSS3PC(timeout=TIMEOUT), **trainer_kwargs(tmp_path))
    val_strategy = val_trainer.strategy
    (res,) = val_trainer.validate(resumed, val_loader)
    with torch.no_grad():
        pred = resumed(x)
    assert abs(res["val_mae"] - (pred - y).abs().mean().item()) < 1e-3
    assert abs(res["val_loss"] - F.mse_loss(pred, y).item()) < 1e-3
    kinds = {(o.what, o.name, o.to, o.kind) for o in val_strategy.openings}
    assert ("predictions", "metric/val_mae", "party 0", "reveal") in kinds
    assert ("metrics", "val_mae", "all", "publish") in kinds


def test_disallowed_opening_is_refused(tmp_path):
    model = MetricLogger()
    trainer = pl.Trainer(strategy=RSS3PC(timeout=TIMEOUT, reveal={"metrics": None}), max_steps=2,
                         **trainer_kwargs(tmp_path))
    with pytest.raises(RevealPolicyError, match="does not allow opening metrics 'train_gap'"):
        trainer.fit(model)


def _refuse_outside_the_data_owner(what: str) -> None:
    rank = os.environ.get("LOCAL_RANK")
    if rank not in (None, "0"):
        raise RuntimeError(f"{what} in party {rank}: only the data owner may touch the data")


class OwnerOnlyDataModule(pl.LightningDataModule):
    """Every hook, and being unpickled, fails outside the data owner (the launching process may build it)."""

    def __init__(self):
        super().__init__()
        self.x, self.y = regression_data()

    def __setstate__(self, state):
        _refuse_outside_the_data_owner("a DataModule unpickled")
        self.__dict__.update(state)

    def prepare_data(self):
        _refuse_outside_the_data_owner("DataModule.prepare_data")

    def setup(self, stage):
        _refuse_outside_the_data_owner(f"DataModule.setup({stage})")

    def train_dataloader(self):
        _refuse_outside_the_data_owner("DataModule.train_dataloader")
        return DataLoader(TensorDataset(self.x, self.y), batch_size=8)

    def val_dataloader(self):
        _refuse_outside_the_data_owner("DataModule.val_dataloader")
        return DataLoader(TensorDataset(self.x, self.y), batch_size=16)


class UnpicklableOutsideOwner(TensorDataset):
    def __setstate__(self, state):
        _refuse_outside_the_data_owner("a dataset unpickled")
        self.__dict__.update(state)


class HoldsItsData(LinearRegressor):
    """Keeps its dataset as an attribute and builds its loader from it in a hook that fails outside the owner."""

    def __init__(self):
        super().__init__()
        self.dataset = UnpicklableOutsideOwner(*regression_data())

    def prepare_data(self):
        _refuse_outside_the_data_owner("LightningModule.prepare_data")

    def train_dataloader(self):
        _refuse_outside_the_data_owner("LightningModule.train_dataloader")
        return DataLoader(self.dataset, batch_size=8)


def test_datamodule_and_dataset_attributes_stay_with_the_data_owner(tmp_path):
    torch.manual_seed(0)
    model = LinearRegressor()
    want = plain_linear_training(model, steps=4)
    trainer = pl.Trainer(strategy=RSS3PC(timeout=TIMEOUT), max_steps=4, limit_val_batches=1,
                         **trainer_kwargs(tmp_path))
    trainer.fit(model, datamodule=OwnerOnlyDataModule())
    assert_close_state(dict(model.state_dict()), want, atol=2e-3)
    assert "val_loss" in trainer.callback_metrics  # the validation loop ran in step on all three parties
    torch.manual_seed(0)
    model = HoldsItsData()
    trainer = pl.Trainer(strategy=RSS3PC(timeout=TIMEOUT), max_steps=4, **trainer_kwargs(tmp_path))
    trainer.fit(model)
    assert_close_state(dict(model.state_dict()), want, atol=2e-3)


class SneakyReveal(LinearRegressor):
    """Opens its predictions outside the reveal policy in training_step, by a direct reveal_tensor or through
    strategy.reveal under a name the policy forbids; each party records what its communicator sent and received for
    that opening, then lets the error through."""

    def __init__(self, out_dir: str = "", via: str = "reveal_tensor"):
        super().__init__()
        self.out_dir, self.via = out_dir, via

    def training_step(self, batch, batch_idx):
        from secure_lightning.tensor import reveal_tensor
        x, y = batch
        pred = self(x)
        party = self.trainer.strategy.party
        comm = party.comm
        before = {k: c.bytes for k, c in comm.stats.snapshot().items()}
        comm.record_received = []
        n_audit = len(party.audit)
        try:
            if self.via == "reveal_tensor":
                reveal_tensor(pred, label="sneak")
            else:
                self.trainer.strategy.reveal(pred, "metrics", "sneak")
        except RevealPolicyError as e:
            moved = {k: c.bytes - before.get(k, 0) for k, c in comm.stats.snapshot().items()
                     if "sneak" in k or "policy" in k}
            got = [label for label, _, _ in comm.record_received if "sneak" in label or "policy" in label]
            opened = [o.label for o in party.audit.records[n_audit:]]  # the overflow guard's counts may precede
            torch.save({"msg": str(e), "moved": moved, "received": got, "opened": opened},
                       os.path.join(self.out_dir, f"party{party.rank}.pt"))
            raise
        finally:
            comm.record_received = None
        return F.mse_loss(pred, y)


@pytest.mark.parametrize("via", ["reveal_tensor", "strategy.reveal"])
def test_opening_outside_the_policy_is_refused_before_any_byte_moves(tmp_path, via):
    model = SneakyReveal(str(tmp_path), via)
    trainer = pl.Trainer(strategy=RSS3PC(timeout=TIMEOUT, reveal={"sneak": None}), max_steps=1,
                         **trainer_kwargs(tmp_path))
    words = "refused to open 'sneak'" if via == "reveal_tensor" else "does not allow opening metrics 'sneak'"
    with pytest.raises(RevealPolicyError, match=words):
        trainer.fit(model)
    for r in range(3):  # every party refused on its own, and none sent or received a byte of the opening
        seen = torch.load(tmp_path / f"party{r}.pt", weights_only=False)
        assert words in seen["msg"]
        assert seen["moved"] == {} and seen["received"] == [], seen
        assert all(label.startswith("guard/") for label in seen["opened"]), seen


class ScoreCollector(LinearRegressor):
    """Validation keeps every prediction in a CatMetric (a concatenation: per-example scores), logs a per-batch
    MeanAbsoluteError through forward(), and records on every party what each party holds at the end."""

    def __init__(self, out_dir: str = ""):
        super().__init__()
        import torchmetrics
        self.out_dir = out_dir
        self.scores = torchmetrics.CatMetric()
        self.batch_mae = torchmetrics.MeanAbsoluteError()
        self.unlogged_mae = torchmetrics.MeanAbsoluteError()

    def validation_step(self, batch, batch_idx):
        x, y = batch
        pred = self(x)
        self.scores.update(pred)
        self.log("batch_mae", self.batch_mae(pred, y))  # forward() value, logged: published (a scalar)
        self.unlogged_mae(pred, y)                       # forward() value, not logged: stays with the data owner

    def on_validation_epoch_end(self):
        rank = self.trainer.strategy.party.rank
        scores = self.scores.compute()  # a vector: stays with the data owner
        held = {"scores": scores, "state": [t.clone() for t in self.scores.value],
                "unlogged": self.unlogged_mae._forward_cache, "logged": self.batch_mae._forward_cache}
        torch.save(held, os.path.join(self.out_dir, f"party{rank}.pt"))


def test_catmetric_scores_stay_with_the_data_owner(tmp_path):
    torch.manual_seed(0)
    model = ScoreCollector(str(tmp_path))
    x, y = regression_data()
    trainer = pl.Trainer(strategy=RSS3PC(timeout=TIMEOUT), **trainer_kwargs(tmp_path))
    (res,) = trainer.validate(model, DataLoader(TensorDataset(x, y), batch_size=16))
    with torch.no_grad():
        pred = model(x)
    held = [torch.load(tmp_path / f"party{r}.pt", weights_only=False) for r in range(3)]
    assert torch.allclose(held[0]["scores"], pred, atol=1e-3)  # the data owner has its scores
    assert held[0]["unlogged"] is not None
    for r in (1, 2):  # the others never see a score, in the result or in the metric's state
        assert held[r]["scores"] is None and held[r]["state"] == [], held[r]
        assert held[r]["unlogged"] is None
        assert held[r]["logged"] is not None and held[r]["logged"].numel() == 1  # published: logged, a scalar
    assert abs(res["batch_mae"] - (pred - y).abs().mean().item()) < 1e-3
    published = {(o.name, o.shape) for o in trainer.strategy.openings if o.kind == "publish"}
    assert published == {("batch_mae", ())}, published


class SkewedFracBits(RSS3PC):
    """Party 1 is started with 16 fractional bits, the others with the default 20 (as if configured separately)."""

    def setup_environment(self):
        if os.environ.get("LOCAL_RANK") == "1":
            from secure_lightning.encoding import FixedPoint
            self.encoding = FixedPoint(16)
        super().setup_environment()


def test_frac_bits_mismatch_stops_all_parties_at_the_handshake(tmp_path):
    from secure_lightning.handshake import HandshakeError
    trainer = pl.Trainer(strategy=SkewedFracBits(timeout=TIMEOUT), max_steps=1, **trainer_kwargs(tmp_path))
    with pytest.raises(HandshakeError, match=r"frac_bits differs \(party 0: 20, party 1: 16, party 2: 20\)") as info:
        trainer.fit(LinearRegressor())
    notes = "\n".join(getattr(info.value, "__notes__", []))
    for r in range(3):  # each party raised the handshake error itself
        assert f"party {r}: HandshakeError" in notes, notes


class MetricLogger(LinearRegressor):
    def training_step(self, batch, batch_idx):
        x, y = batch
        pred = self(x)
        loss = F.mse_loss(pred, y)
        self.log("train_loss", loss)            # allowed: loss -> all
        self.log("train_gap", (pred - y).mean())  # a metric: forbidden by reveal={"metrics": None}
        return loss


class DieAt(pl.Callback):
    """Party `rank` stops at batch `batch_idx`: os._exit (dies) or sleeps (hangs)."""

    def __init__(self, rank, batch_idx, hang=False):
        self.rank, self.batch_idx, self.hang = rank, batch_idx, hang

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == self.rank and batch_idx == self.batch_idx:
            if self.hang:
                time.sleep(3600)
            os._exit(3)


def _fault_run(tmp_path, hang: bool, timeout: float):
    ckpt_dir = tmp_path / "ckpt"
    cb = pl.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), filename="{step}", every_n_train_steps=1,
                                      save_top_k=-1)
    trainer = pl.Trainer(strategy=RSS3PC(timeout=timeout), max_steps=6, callbacks=[DieAt(2, 1, hang), cb],
                         **trainer_kwargs(tmp_path, enable_checkpointing=True))
    t0 = time.monotonic()
    with pytest.raises(PartyFailedError, match="party 2") as info:
        trainer.fit(LinearRegressor())
    elapsed = time.monotonic() - t0
    # the step-1 checkpoint was written by all three before party 2 stopped, and is complete and readable
    base = ckpt_dir / "step=1.ckpt"
    for r in range(3):
        assert torch.load(party_path(base, r), weights_only=False)["secure_lightning"]["party"] == r
    assert not [f for f in os.listdir(ckpt_dir) if ".tmp" in f]
    return str(info.value), elapsed


def test_dead_party_stops_the_others(tmp_path):
    msg, elapsed = _fault_run(tmp_path, hang=False, timeout=20.0)
    assert "party 2 exited with code 3" in msg
    assert elapsed < 90  # start-up (~10-20 s on a loaded 2-core machine) + a fast peer error, far below 2 x timeout


@pytest.mark.slow
def test_hung_party_stops_the_others_within_the_timeout(tmp_path):
    msg, elapsed = _fault_run(tmp_path, hang=True, timeout=8.0)
    assert "party 2 hung" in msg and "PartyTimeoutError" in msg and "timeout 8s" in msg
    assert elapsed < 90  # start-up + the others' timeout (8 s); then the launcher stops the hung party at once


MULTIHOST_SCRIPT = """
import os, sys
import torch, pytorch_lightning as pl
from torch.utils.data import DataLoader, TensorDataset
sys.path.insert(0, {root!r})
from tests.test_strategy import LinearRegressor, regression_data, trainer_kwargs
from secure_lightning import NoData, RSS3PC

if __name__ == "__main__":
    rank = int(os.environ["NODE_RANK"])
    torch.manual_seed(0)
    model = LinearRegressor()
    x, y = regression_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=8) if rank == 0 else NoData()
    # only the data owner names a validation loader: the others learn from it that one exists
    val = DataLoader(TensorDataset(x, y), batch_size=16) if rank == 0 else None
    trainer = pl.Trainer(strategy=RSS3PC(timeout=60), num_nodes=3, devices=1, max_steps=6,
                         **trainer_kwargs({out!r} + f"/root{{rank}}", limit_val_batches=1))
    trainer.fit(model, loader, val)
    assert "val_loss" in trainer.callback_metrics
    torch.save({{k: v.detach() for k, v in model.state_dict().items()}}, {out!r} + f"/w{{rank}}.pt")
"""


@pytest.mark.slow
def test_three_hosts_with_node_rank(tmp_path):
    """Three 'hosts' (processes started independently) with Lightning's multi-node environment variables."""
    import subprocess
    import sys
    from secure_lightning.runtime import free_port
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "host.py"
    script.write_text(MULTIHOST_SCRIPT.format(root=root, out=str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    procs = [subprocess.Popen([sys.executable, str(script)], env=dict(env, NODE_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(3)]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    torch.manual_seed(0)
    init = LinearRegressor()
    want = plain_linear_training(init, steps=6)
    assert_close_state(torch.load(tmp_path / "w0.pt"), want, atol=2e-3)  # the model owner gets the trained weights
    for r in (1, 2):  # the other hosts keep their own initial values: nothing secret lands there
        assert_close_state(torch.load(tmp_path / f"w{r}.pt"), dict(init.state_dict()), atol=0)


def test_format_1_checkpoint_with_adam_state_is_refused(tmp_path):
    """Checkpoints before format 2 held Adam's raw moments at 2^f; reading them as this version's bias-corrected
    moments would be silently wrong, so they are refused with an explanation (SGD state still loads)."""
    from secure_lightning.checkpoint_io import ShareCheckpointIO, party_path
    io = ShareCheckpointIO()
    io.bind(0, 20)
    meta = {"party": 0, "frac_bits": 20, "format": 1}
    adam = {"optimizer_states": [{"state": {0: {"step": 3, "exp_avg": 0, "exp_avg_sq": 0}}}], "secure_lightning": meta}
    sgd = {"optimizer_states": [{"state": {0: {"momentum_buffer": 0}}}], "secure_lightning": meta}
    torch.save(adam, party_path(tmp_path / "a.ckpt", 0))
    torch.save(sgd, party_path(tmp_path / "s.ckpt", 0))
    with pytest.raises(ValueError, match="before format 2"):
        io.load_checkpoint(tmp_path / "a.ckpt")
    assert io.load_checkpoint(tmp_path / "s.ckpt")["secure_lightning"]["format"] == 1
