"""Train, test or run inference with any model/data/strategy combination from conf/ (Hydra).

    python train.py                                   # private training (strategy=rss3pc) on digits
    python train.py strategy=plain                    # the same in plain PyTorch Lightning
    python train.py experiment=train_lenet_mnist      # a CryptGPU paper setting
    python train.py mode=test ckpt_path=path/to.ckpt  # evaluate a checkpoint
    python train.py -m strategy=plain model.optimizer.lr=0.05,0.1,0.2   # sweep; one folder per run

Three hosts (one party each; `trainer.num_nodes=3`, and on every host MASTER_ADDR/MASTER_PORT = party 0's address and a
free port, NODE_RANK = 0, 1 or 2): the same command on each host. Only the data owner's host (strategy.data_owner)
builds the data module and needs the data set; the others never instantiate it (they may lack the data set or name
another `data=` entirely) and join with a `NoData` placeholder:

    NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 python train.py trainer.num_nodes=3   # data owner
    NODE_RANK=1 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 python train.py trainer.num_nodes=3   # no data here

Each run writes metrics.json (final metrics, run times and, when the strategy reports it, communication) to its
Hydra output folder. The module is re-entrant: Lightning launchers may import or re-run it in every party process;
only global rank 0 writes files.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from typing import Any, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

MODES = ("fit", "test", "predict")


def build_strategy(cfg: Optional[DictConfig]):
    """A config with `_target_` is instantiated (e.g. secure_lightning.strategy.RSS3PC); otherwise its `name`
    (a Lightning strategy name such as "auto") is passed to the Trainer as is."""
    if cfg is None:
        return "auto"
    if "_target_" in cfg:
        return hydra.utils.instantiate(cfg)
    return cfg.get("name", "auto")


def build_all(cfg: Optional[DictConfig]) -> list:
    """Instantiate every entry of a dict of configs that has a `_target_` (callbacks, loggers); skip nulls."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def host_party(cfg: DictConfig) -> Optional[int]:
    """This host's party on three hosts (trainer.num_nodes=3 and NODE_RANK set), else None (one machine)."""
    if int(cfg.trainer.get("num_nodes", 1) or 1) != 3 or "NODE_RANK" not in os.environ:
        return None
    return int(os.environ["NODE_RANK"])


def holds_data(cfg: DictConfig) -> bool:
    """Whether this process builds the data module: always on one machine; on three hosts only the data owner."""
    party = host_party(cfg)
    strategy = cfg.get("strategy") or {}
    return party is None or "_target_" not in strategy or party == int(strategy.get("data_owner", 0))


def plain_checkpoint(ckpt_path, strategy):
    """ckpt_path as the strategy can read it. A secure share checkpoint given to a plain strategy: its plaintext
    export `<ckpt>.plain` when the model owner wrote one, else a ValueError that says what the file is."""
    if ckpt_path is None or not os.path.isfile(str(ckpt_path)) or type(strategy).__name__ == "RSS3PC":
        return ckpt_path
    from secure_lightning.checkpoint_io import secure_checkpoint_note
    note = secure_checkpoint_note(ckpt_path)
    if note is None:
        return ckpt_path
    plain = f"{ckpt_path}.plain"
    if os.path.isfile(plain):
        log.warning(f"{ckpt_path} is a secure share checkpoint: using the model owner's plaintext export {plain}")
        return plain
    raise ValueError(f"ckpt_path={ckpt_path}: {note}")


def _number(v: Any):
    if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
        v = v.item()
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


def _flatten(prefix: str, d: Any, out: dict) -> None:
    if isinstance(d, dict):
        for k, v in d.items():
            _flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = _number(d)


def communication(trainer, stage: str) -> dict[str, Any]:
    """Communication of the stage that just ran, as flat `comm/<stage>/<key>` entries.

    Sources (whichever exist): `trainer.strategy.communication_summary()` -> dict (e.g. bytes, rounds, messages of
    party 0, possibly nested by label), and metrics the strategy logged under `comm/...`. Plain strategies: {}.
    """
    out: dict[str, Any] = {}
    summary = getattr(trainer.strategy, "communication_summary", None)
    if callable(summary):
        s = summary()
        if s:
            _flatten(f"comm/{stage}", dict(s), out)
    for k, v in trainer.callback_metrics.items():
        if k.startswith("comm/"):
            out[f"comm/{stage}/{k[len('comm/'):]}"] = _number(v)
    return out


def _stage_metrics(trainer) -> dict[str, Any]:
    return {k: _number(v) for k, v in trainer.callback_metrics.items() if not k.startswith("comm/")}


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    lines = []
    for stage in ("test", "val"):
        if f"{stage}/acc" in metrics:
            loss = metrics.get(f"{stage}/loss")
            lines.append(f"{stage} accuracy: {100 * metrics[f'{stage}/acc']:.2f}%"
                         + (f"  ({stage} loss {loss:.4f})" if isinstance(loss, float) else ""))
    for stage in MODES:
        b, r = metrics.get(f"comm/{stage}/bytes"), metrics.get(f"comm/{stage}/rounds")
        if b is not None:
            lines.append(f"communication ({stage}, party 0 sent): {_human_bytes(float(b))}"
                         + (f" in {int(r)} rounds" if r is not None else ""))
    if not any(k.startswith("comm/") for k in metrics):
        lines.append("communication: none reported (plain strategy)")
    for stage in MODES:
        if f"time/{stage}_s" in metrics:
            lines.append(f"{stage} time: {metrics[f'time/{stage}_s']:.1f} s")
    return lines


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build data, model, strategy and trainer from `cfg` and run `cfg.mode`; return the final metrics (the
    content of metrics.json): logged metrics such as test/acc, `time/<stage>_s` and `comm/<stage>/...`."""
    import pytorch_lightning as pl

    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    # deliberate on small machines (0 workers), and the secure strategy feeds batches from party 0 anyway
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")

    datamodule = hydra.utils.instantiate(cfg.data) if holds_data(cfg) else None
    model = hydra.utils.instantiate(cfg.model)
    strategy = build_strategy(cfg.get("strategy"))
    loggers = build_all(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, strategy=strategy, callbacks=build_all(cfg.get("callbacks")),
                                      logger=loggers or False)
    if datamodule is None:  # three hosts, not the data owner: the data owner's host feeds every batch
        from secure_lightning import NoData
        data_args = {"fit": {"train_dataloaders": NoData()}, "test": {"dataloaders": NoData()},
                     "predict": {"dataloaders": NoData()}}
    else:
        data_args = {stage: {"datamodule": datamodule} for stage in MODES}
    if hasattr(datamodule, "check_data"):
        datamodule.check_data()  # a missing data set fails here, with instructions, before any process starts

    metrics: dict[str, Any] = {}

    def run(stage: str, fn, ckpt_path):
        ckpt_path = plain_checkpoint(ckpt_path, trainer.strategy)
        start = time.perf_counter()
        out = fn(model, ckpt_path=ckpt_path, **data_args[stage])
        metrics[f"time/{stage}_s"] = time.perf_counter() - start
        metrics.update(_stage_metrics(trainer))
        metrics.update(communication(trainer, stage))
        return out

    predictions = None
    if cfg.mode == "fit":
        run("fit", trainer.fit, cfg.get("ckpt_path"))
        if cfg.get("test_after_fit", True):
            run("test", trainer.test, cfg.get("test_ckpt_path"))
    elif cfg.mode == "test":
        if cfg.get("ckpt_path") is None:
            log.warning("mode=test without ckpt_path: evaluating freshly initialised weights")
        run("test", trainer.test, cfg.get("ckpt_path"))
    else:
        predictions = run("predict", trainer.predict, cfg.get("ckpt_path"))

    if trainer.is_global_zero:
        output_dir = cfg.paths.output_dir
        os.makedirs(output_dir, exist_ok=True)
        if predictions:
            import torch

            logits = torch.cat([p.detach().float().cpu() for p in predictions])
            torch.save({"logits": logits, "labels": logits.argmax(dim=1)}, os.path.join(output_dir, "predictions.pt"))
            metrics["predict/num_samples"] = int(logits.shape[0])
        with open(os.path.join(output_dir, "metrics.json"), "w") as f:
            json.dump({"mode": cfg.mode, **metrics}, f, indent=2, sort_keys=True)
        for line in summary_lines(metrics):
            print(line)
        print(f"metrics: {os.path.join(output_dir, 'metrics.json')}")
    return metrics


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> Optional[float]:
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
