"""pod-agent benchmarks: one module per measurement, one runner (``python -m bench``).

Each module named in ``BENCHMARKS`` exposes ``run(small: bool) -> dict`` (JSON-able);
``small`` is the smoke size CI runs, otherwise its full size (the goals in the README). The runner
(__main__.py) runs each in its own process, records the machine, and writes the results
as JSON and as a markdown table.
"""

BENCHMARKS: tuple[str, ...] = ("datasource", "training", "sandbox_startup", "secagg", "wire", "idle_agent", "dp_noise",
                              "cli_startup", "rounds", "hub_db", "ddp", "images", "hub_load", "strategies",
                              "hub_failover")

__all__ = ["BENCHMARKS"]
