"""After fit, the launching process holds what plain Lightning holds, as far as it is public (secure_lightning/
results.py): the LightningModule's plain attributes set in its hooks, a user Callback's state (its state_dict and
plain attributes), ModelCheckpoint's best path and score, EarlyStopping's state, logged metrics, and the optimizers
and LR schedulers with their public state (lr after the schedule, scheduler steps).

Plain vs rss3pc on the same model, data and seed; logged values within 5e-3 (fixed point, see
tests/test_strategy_logs.py), counters and paths exactly.
"""
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from tests.test_strategy import LinearRegressor, regression_data, trainer_kwargs

TOL = 5e-3


class EpochMeans(LinearRegressor):
    def __init__(self):
        super().__init__()
        self.epoch_losses = []
        self.steps_seen = 0

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.steps_seen += 1
        return loss

    def on_train_epoch_end(self):
        self.epoch_losses.append(float(self.trainer.callback_metrics["train_loss"]))


class CountingCallback(pl.Callback):
    def __init__(self):
        self.batches = 0
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1
        self.losses.append(float(trainer.callback_metrics["train_loss"]))

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state["batches"]


def _fit(tmp_path, strategy):
    torch.manual_seed(0)
    model = EpochMeans()
    x, y = regression_data()
    val = DataLoader(TensorDataset(x, y), batch_size=16)
    counting = CountingCallback()
    best = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val_loss", save_top_k=1)
    early = EarlyStopping(monitor="val_loss", patience=5)
    trainer = pl.Trainer(strategy=strategy, max_epochs=3, log_every_n_steps=1, callbacks=[counting, best, early],
                         **trainer_kwargs(tmp_path, enable_checkpointing=True, limit_val_batches=1))
    trainer.fit(model, val_dataloaders=val)
    return trainer, model, counting, best, early


def test_state_after_fit_matches_plain_lightning(tmp_path):
    pt, pm, pc, pb, pe = _fit(tmp_path / "plain", "auto")
    st, sm, sc, sb, se = _fit(tmp_path / "secure", "rss3pc")
    assert sm.steps_seen == pm.steps_seen == 12
    assert len(sm.epoch_losses) == len(pm.epoch_losses) == 3
    assert max(abs(a - b) for a, b in zip(sm.epoch_losses, pm.epoch_losses)) <= TOL
    assert sc.batches == pc.batches == 12 and len(sc.losses) == 12
    assert max(abs(a - b) for a, b in zip(sc.losses, pc.losses)) <= TOL
    assert sb.best_model_path.replace("secure", "plain") == pb.best_model_path
    assert abs(float(sb.best_model_score) - float(pb.best_model_score)) <= TOL
    assert se.wait_count == pe.wait_count and se.stopped_epoch == pe.stopped_epoch
    assert abs(float(se.best_score) - float(pe.best_score)) <= TOL
    assert set(st.logged_metrics) == set(pt.logged_metrics)
    assert st.global_step == pt.global_step == 12 and st.current_epoch == pt.current_epoch
    assert len(st.optimizers) == len(pt.optimizers) == 1
    for k in ("lr", "momentum", "initial_lr"):
        assert st.optimizers[0].param_groups[0][k] == pt.optimizers[0].param_groups[0][k], k
    s_sched, p_sched = st.lr_scheduler_configs[0].scheduler, pt.lr_scheduler_configs[0].scheduler
    assert s_sched.last_epoch == p_sched.last_epoch == 12 and s_sched.get_last_lr() == p_sched.get_last_lr()


def test_nan_input_reports_the_data_owners_own_error(tmp_path):
    """A NaN in a batch: the launching process raises party 0's own error (which names the value), not a peer's
    "party 0 could not share" (that one is a consequence and comes second, whichever party failed first)."""
    import pytest
    from secure_lightning.encoding import FixedPointRangeError
    x, y = regression_data()
    x[3, 1] = float("nan")
    trainer = pl.Trainer(strategy="rss3pc", max_steps=2, **trainer_kwargs(tmp_path))
    with pytest.raises(FixedPointRangeError, match=r"^sharing 'batch/0' from party 0: .*1 NaN/inf value"):
        trainer.fit(LinearRegressor(), DataLoader(TensorDataset(x, y), batch_size=8))
