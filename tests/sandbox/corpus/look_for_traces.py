"""Looks for what leave_traces.py left: none of it may be there."""
import os
import sys

import sbx_test_entry


def run(channel):
    places = {"work": channel.work_dir, "home": os.environ.get("HOME", "/"), "tmp": os.environ.get("TMPDIR", "/"),
              "shm": "/dev/shm"}
    found = {
        "global": hasattr(sbx_test_entry, "LEFT_BY_EARLIER_TASK"),
        "module": "pod_agent_left_behind" in sys.modules,
        "environ": "POD_AGENT_LEFT_BEHIND" in os.environ,
        **{name: os.path.exists(os.path.join(str(place), "left_behind.txt")) for name, place in places.items()},
    }
    return {"token": sbx_test_entry.TOKEN, "found": found}, {}
