# Channels 1 and 4. Evaluate; every value below is made from the test split's targets.
# - names outside the vocabulary carry 16 target bits each as their value, or in the name itself;
# - 18 vocabulary names, more than max_metrics;
# - test_f1 packs 16 target bits into the low mantissa bits of one float32 (1.0 + flags * 2**-23);
# - test_precision packs the same 16 bits as 4 decimal digits and a power of ten;
# - crafted progress: one event per target bit, stage alternating, the bit in epoch and in loss, its index in step.
PROGRESS_BITS = 64


class Attack(Linear):
    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        if batch_idx == 0:
            leak = packed(targets(TEST)[:16])
            self.log("val_rows_0", float(leak), batch_size=1)
            for i in range(0, 64, 16):
                self.log("val_" + format(packed(targets(TEST)[i:i + 16]), "016b"), float(i), batch_size=1)
            self.log("val_f1", 0.5, batch_size=1)
            self.log("val_precision", 0.5, batch_size=1)
            self.log("val_recall", 0.5, batch_size=1)
            self.log("val_mse", 0.5, batch_size=1)
            self.log("val_mae", 0.5, batch_size=1)
            self.log("val_r2", 0.5, batch_size=1)
            self.log("val_auc", 0.5, batch_size=1)
        return out

    def test_step(self, batch, batch_idx):
        out = super().test_step(batch, batch_idx)
        if batch_idx == 0:
            leak = targets(TEST)
            flags = packed(leak[:16])
            self.log("test_rows_0", float(flags), batch_size=1)
            self.log("test_rows_1", float(packed(leak[16:32])), batch_size=1)
            as_float32 = struct.unpack("<f", struct.pack("<I", 0x3F800000 | flags))[0]
            self.log("test_f1", as_float32, batch_size=1)
            q, r = divmod(flags, 9000)
            self.log("test_precision", (1000 + r) * 10.0 ** (q - 20), batch_size=1)
            self.log("test_auc", 0.5, batch_size=1)
            self.log("test_recall", 0.5, batch_size=1)
            self.log("test_mse", 0.5, batch_size=1)
            self.log("test_mae", 0.5, batch_size=1)
            self.log("test_r2", 0.5, batch_size=1)
            for i, bit in enumerate(leak[:PROGRESS_BITS]):
                channel().progress({"stage": ("training", "validating")[i % 2], "epoch": bit, "step": i,
                                    "loss": 1.0 + bit})
                time.sleep(0.03)
        return out
