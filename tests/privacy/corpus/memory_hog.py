# Channel 9: memory exhaustion during evaluation must arrive as memory_exceeded, whatever the model says.
class Attack(Linear):
    def test_step(self, batch, batch_idx):
        hog = []
        while True:
            hog.append(b"\x01" * (64 << 20))
