# Channel 9: failure codes chosen inside the sandbox (hyperparameter ``variant``).
from pod_agent.errors import TrainingError


class Attack(Linear):
    def create_model(self):
        if channel() is not None:
            variant = self.hyperparameters["variant"]
            leak = packed(targets(TEST)[:16])
            if variant == "made_up_code":
                raise TrainingError("rows_" + format(leak, "016b"), "a code made from rows")
            if variant == "agent_code":
                send_failure("too_few_rows" if leak & 1 else "sandbox_unavailable")
            if variant == "free_text":
                # Past the channel's own check on the word: a raw fail frame with the bits in it.
                send_raw(json.dumps({"type": "fail", "reason": "row 0 is " + format(leak, "016b")}))
        return super().create_model()
