"""The modeller's side: FedAvg from the demo's initial weights, every pod training and evaluating each
round; the time each round ends is written to the run config's ``round-times`` file."""

import json
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    with np.load(str(config["initial-weights"])) as weights:
        initial = ArrayRecord({name: torch.from_numpy(weights[name]) for name in weights.files})
    pods = int(config["pods"])
    ends: list[float] = []

    def round_ended(_round: int, _arrays: ArrayRecord) -> MetricRecord | None:
        # Called before round 1 and after every round (the strategy's central-evaluation hook).
        ends.append(time.time())
        return None

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=pods, min_evaluate_nodes=pods,
                      min_available_nodes=pods)
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=int(config["num-server-rounds"]),
                            evaluate_fn=round_ended)
    accuracy = None
    if result.evaluate_metrics_clientapp:
        last = result.evaluate_metrics_clientapp[max(result.evaluate_metrics_clientapp)]
        accuracy = float(last["eval_accuracy"])
    with open(str(config["round-times"]), "w") as handle:
        json.dump({"ends": ends, "accuracy": accuracy}, handle)
