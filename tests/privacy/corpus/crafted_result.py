# Results the model crafts before training (hyperparameter ``variant`` picks one); each carries rows.
import numpy as np
from safetensors.numpy import load as load_numpy
from safetensors.numpy import save as save_numpy


def _pinned():
    """The pinned starting weights (train tasks): the names and shapes the agent expects back."""
    with open(channel().input_dir / "weights.safetensors", "rb") as handle:
        return load_numpy(handle.read())


def _rows(n):
    x = prepared().column("x").to_pylist()[:n]
    return np.asarray(x, dtype=np.float32)


def _with_rows(arrays):
    """The largest tensor's first values replaced by training targets; names and shapes unchanged."""
    largest = max(arrays, key=lambda name: arrays[name].size)
    leak = targets(TRAIN)[: arrays[largest].size]
    arrays[largest].flat[: len(leak)] = leak
    return arrays


def _result(arrays, *, n_rows, dtype="F32"):
    described = {name: {"shape": list(a.shape), "dtype": dtype} for name, a in sorted(arrays.items())}
    return {"metrics": {}, "n_rows": n_rows, "tensors": described}, save_numpy(dict(sorted(arrays.items())))


def craft(variant):
    if variant == "extra_tensor":
        arrays = {name: np.zeros_like(a) for name, a in _pinned().items()}
        arrays["rows"] = _rows(32)
        send_result(*_result(arrays, n_rows=420))
    if variant == "dtype_under_f32_header":
        arrays = _with_rows({name: np.zeros_like(a, dtype=np.float64) for name, a in _pinned().items()})
        send_result(*_result(arrays, n_rows=420, dtype="F32"))
    if variant == "negative_rows":
        send_result({"metrics": {}, "n_rows": -packed(targets(TEST)[:32]), "tensors": {}})
    if variant == "nan_rows":
        # json.dumps in the channel refuses NaN: written by hand, with 16 target bits in a metric beside it.
        send_raw('{"type":"result","header":{"metrics":{"test_loss":%d},"n_rows":NaN,"tensors":{}}}'
                 % packed(targets(TEST)[:16]))
    if variant == "metric_flood":
        leak = targets(TEST)
        send_result({"metrics": {f"m{i}": float(bit) for i, bit in enumerate(leak * 100)}, "n_rows": 140,
                     "tensors": {}})
    raise RuntimeError(f"unknown variant {variant!r}")


class Attack(Linear):
    def create_model(self):
        if channel() is not None:
            craft(self.hyperparameters["variant"])
        return super().create_model()
