"""Attack (or mistake): import a module that does not exist."""
import pod_agent_no_such_module  # noqa: F401


def run(channel):
    return {}, {}
