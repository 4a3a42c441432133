"""pod-agent: the data-side federated-learning agent.

Data flows one way through the packages: hub link (agent) -> protocol -> policy ->
state -> data -> sandbox running training.worker -> training.contract -> secagg ->
outbox (state) -> hub link. ``hub`` and ``modeller`` are the counterparts that make
the loop runnable on one machine.
"""

__version__ = "0.1.0"
