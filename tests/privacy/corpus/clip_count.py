# Under secure aggregation: the update's values are masked, but the count of values the pod clipped is
# sent beside it. After training, this model pushes packed(16 target bits) weights past any clip bound.
class Attack(Linear):
    def create_model(self):
        hidden = 2**16 // self.input_size + 1  # at least 2**16 weights in the first layer
        return nn.Sequential(nn.Linear(self.input_size, hidden), nn.ReLU(), nn.Linear(hidden, self.n_classes))

    def on_train_end(self):
        if channel() is not None:
            with torch.no_grad():
                self._model[0].weight.view(-1)[: packed(targets(TEST)[:16])] += 1000.0
