"""elr.integrations with the real pinned packages: a Lightning fit, a Hugging Face Trainer fit, TensorBoard
event files read back."""
import numpy as np
import pytest
import torch
from torch import nn

from elr import integrations, measure, nets

pytest.importorskip("lightning", reason="pip install 'elr[lightning]' (part of elr[dev])")


def _data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _event_scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_writer_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nets.bnrelu(3, width=6, in_features=5, num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    monitor = measure.ELRMonitor(model, every=2)
    monitor.attach(opt)
    writer = integrations.TensorBoardWriter(tmp_path, per_layer=True)
    x, y = _data()
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        writer.write(monitor.records)
    writer.close()
    scalars = _event_scalars(tmp_path)
    summary = monitor.records.summary()
    assert [s for s, _ in scalars["elr/spread"]] == [0, 2, 4]
    np.testing.assert_allclose([v for _, v in scalars["elr/spread"]], summary["spread"], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["elr/kappa_lh"]], summary["kappa_lh"], rtol=1e-6)
    assert f"elr/{monitor.names[0]}" in scalars  # per-layer on request


def _lightning_module():
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nets.bnrelu(3, width=6, in_features=5, num_classes=3)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.3)

    return Tiny()


def test_lightning_callback_logs_elrs_of_accumulated_gradients(tmp_path):
    import lightning.pytorch as pl

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=False)
    module = _lightning_module()
    init = {k: v.clone() for k, v in module.net.state_dict().items()}
    callback = integrations.lightning_callback(every=2, module_attr="net")
    trainer = pl.Trainer(max_steps=4, accumulate_grad_batches=2, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, callbacks=[callback])
    trainer.fit(module, loader)
    records = callback.monitor.records
    assert list(records.steps()) == [0, 2]  # 4 optimizer steps from 8 batches, every 2nd logged
    assert "elr/spread" in trainer.callback_metrics
    # step 0's gradient is the mean over the first two batches (Lightning divides the loss by 2)
    net = nets.bnrelu(3, width=6, in_features=5, num_classes=3)
    net.load_state_dict(init)
    for b in range(2):
        (nn.functional.cross_entropy(net(x[16 * b:16 * (b + 1)]), y[16 * b:16 * (b + 1)]) / 2).backward()
    expected = [float(m.weight.grad.norm()) for _, m in nets.scale_invariant_layers(net)]
    np.testing.assert_allclose(records.matrix("grad_norm")[1][0], expected, rtol=1e-5)


def test_hf_trainer_callback_logs_elrs(tmp_path):
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainingArguments

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nets.bnrelu(3, width=6, in_features=5, num_classes=3)

        def forward(self, inputs=None, labels=None):
            logits = self.net(inputs)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    x, y = _data()
    dataset = [{"inputs": x[i], "labels": y[i]} for i in range(len(x))]
    sunk = []  # what a logger such as wandb.log would get
    callback = integrations.hf_callback(every=2, tensorboard=tmp_path / "tb",
                                        sink=lambda scalars, step: sunk.append((step, scalars)))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=16,
                             learning_rate=0.3, optim="sgd", lr_scheduler_type="constant", logging_steps=2,
                             report_to=[], use_cpu=True, save_strategy="no", gradient_accumulation_steps=1,
                             dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=Classifier(), args=args, train_dataset=dataset, callbacks=[callback])
    trainer.train()
    records = callback.monitor.records
    assert list(records.steps()) == [0, 2]
    # the default layers: the audit's, on the first training batch (Classifier declares none itself)
    assert callback.monitor.names == ["net.body.0", "net.body.3", "net.body.6"]
    logged = [entry for entry in trainer.state.log_history if "elr/spread" in entry]
    assert logged, trainer.state.log_history
    scalars = _event_scalars(tmp_path / "tb")
    np.testing.assert_allclose([v for _, v in scalars["elr/spread"]], records.summary()["spread"], rtol=1e-6)
    assert [step for step, _ in sunk] == [0, 2]
    np.testing.assert_allclose([d["elr/spread"] for _, d in sunk], records.summary()["spread"], rtol=1e-6)
    with pytest.raises(ValueError, match="sink must be a callable"):
        integrations.hf_callback(sink="wandb")


def test_callbacks_summarise_each_log_from_that_step_alone_and_accept_layers(tmp_path, monkeypatch):
    """A log must not re-read the whole history (that grew to a second per log after 50,000 logged steps): the
    Lightning fit below never builds the records table, yet logs the same scalars a summary of it gives."""
    import lightning.pytorch as pl

    builds = {"n": 0}
    table = measure.Records.table

    def counting(self):
        builds["n"] += 1
        return table.fget(self)

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=False)
    logged = []

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if "elr/spread" in trainer.callback_metrics:
                logged.append(float(trainer.callback_metrics["elr/spread"]))

    callback = integrations.lightning_callback(every=1, module_attr="net", layers=["body.0.weight", "body.3.weight"],
                                               spill_to=tmp_path / "spill")
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[callback, Spy()])
    monkeypatch.setattr(measure.Records, "table", property(counting))
    trainer.fit(_lightning_module(), loader)
    assert builds["n"] == 0
    monkeypatch.undo()
    assert callback.monitor.names == ["body.0", "body.3"]
    np.testing.assert_allclose(logged, callback.monitor.records.summary()["spread"], rtol=1e-6)
    with pytest.raises(ValueError, match="layers must be None"):
        integrations.lightning_callback(layers="all")
    with pytest.raises(ValueError, match="every must be"):
        integrations.hf_callback(every=0)


def test_lightning_callback_under_amp_reads_unscaled_gradients_and_leaves_out_skipped_steps(tmp_path):
    """Lightning unscales plain optimizers before on_before_optimizer_step but leaves a fused one's gradients
    scaled (its kernel unscales); a step with inf gradients is skipped by the scaler yet counted by Lightning."""
    import lightning.pytorch as pl
    from lightning.pytorch.plugins.precision import MixedPrecision

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=False)
    grads = {}
    for fused in (False, True):
        module = _lightning_module()
        module.configure_optimizers = lambda m=module, f=fused: torch.optim.SGD(m.parameters(), lr=0.3, fused=f)
        step_loss = module.training_step
        module.training_step = lambda batch, i, m=module, f=step_loss: f(batch, i) * (
            float("inf") if m.global_step == 1 else 1.0)
        callback = integrations.lightning_callback(every=1, module_attr="net")
        trainer = pl.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                             callbacks=[callback], plugins=[MixedPrecision("16-mixed", "cpu",
                                                                          scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))])
        trainer.fit(module, loader)
        assert list(callback.monitor.records.steps()) == [0, 2, 3] and callback.monitor.skipped == [1]
        grads[fused] = callback.monitor.records.matrix("grad_norm")[1]
    np.testing.assert_allclose(grads[True], grads[False], rtol=1e-5)
    torch.manual_seed(0)  # the module's initialisation
    net = nets.bnrelu(3, width=6, in_features=5, num_classes=3)
    nn.functional.cross_entropy(net(x[:16]), y[:16]).backward()
    expected = [float(m.weight.grad.norm()) for _, m in nets.scale_invariant_layers(net)]
    np.testing.assert_allclose(grads[False][0], expected, rtol=1e-2)  # fp16 autocast: not to the bit
