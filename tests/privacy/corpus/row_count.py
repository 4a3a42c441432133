# A result of the model's own making whose n_rows packs 48 target bits of the test split (bit 48 set,
# so the leading zeros survive). Everything else is what an honest evaluate returns.
class Attack(Linear):
    def test_step(self, batch, batch_idx):
        send_result({"metrics": {"test_loss": 0.5}, "n_rows": (1 << 48) | packed(targets(TEST)[:48]),
                     "tensors": {}})
