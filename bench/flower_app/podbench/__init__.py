"""The pod-agent demo's federation as a Flower App (bench/rounds.py runs it in deployment mode)."""
