"""Benign: a small Lightning model trained for a few steps with DataLoader worker processes."""
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def run(channel):
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, num_workers=2, persistent_workers=False)
    model = Tiny()
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(channel.work_dir))
    trainer.fit(model, loader)
    channel.progress({"step": int(trainer.global_step)})
    (channel.work_dir / "notes.txt").write_text("trained\n")
    arrays = {name: p.detach().numpy().astype(np.float32) for name, p in model.state_dict().items()}
    return {"steps": int(trainer.global_step), "loss": float(trainer.callback_metrics["train_loss"]),
            "notes": (channel.work_dir / "notes.txt").read_text()}, arrays
