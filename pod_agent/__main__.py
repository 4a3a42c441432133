"""``python -m pod_agent`` is the ``pod-agent`` command."""

from pod_agent.cli.app import main

main()
