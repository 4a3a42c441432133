"""The one-command demo: a local federation (embedded hub, pod processes) on the Adult table.

``federation`` starts and stops the parts; ``scenario`` prepares the non-IID data,
runs secure FedAvg and the central baseline, and writes the report. Import them
from their modules: the scenario pulls in training code the federation does not need.
"""
