"""One pod's side: train one epoch from the incoming weights (AdamW, as the pod's model), or evaluate them."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from podbench.mlp import build, load

app = ClientApp()


def _model(msg: Message, x: torch.Tensor, n_classes: int) -> torch.nn.Module:
    model = build(x.shape[1], n_classes)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    x, y = load(str(context.node_config["data"]), "train")
    model = _model(msg, x, int(context.node_config["classes"]))
    config = context.run_config
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(config["learning-rate"]))
    batch = int(config["batch-size"])
    model.train()
    total = 0.0
    for _epoch in range(int(config["local-epochs"])):
        order = torch.randperm(len(x))
        for start in range(0, len(x), batch):
            rows = order[start : start + batch]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[rows]), y[rows])
            loss.backward()
            optimizer.step()
            total += float(loss) * len(rows)
    metrics = MetricRecord({"train_loss": total / len(x), "num-examples": len(x)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    x, y = load(str(context.node_config["data"]), "test")
    model = _model(msg, x, int(context.node_config["classes"]))
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = float(torch.nn.functional.cross_entropy(logits, y))
        accuracy = float((logits.argmax(1) == y).float().mean())
    metrics = MetricRecord({"eval_loss": loss, "eval_accuracy": accuracy, "num-examples": len(x)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
