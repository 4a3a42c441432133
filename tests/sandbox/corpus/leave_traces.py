"""Attack: leave something for the next task: a module global, a module, files in scratch, the home
dir and /dev/shm, and a setsid'd child that outlives the task. look_for_traces.py looks for them."""
import os
import sys
import time
import types

import sbx_test_entry


def run(channel):
    sbx_test_entry.LEFT_BY_EARLIER_TASK = "trace"
    sys.modules["pod_agent_left_behind"] = types.ModuleType("pod_agent_left_behind")
    os.environ["POD_AGENT_LEFT_BEHIND"] = "trace"
    for place in (channel.work_dir, os.environ.get("HOME", "/"), os.environ.get("TMPDIR", "/"), "/dev/shm"):
        try:
            with open(os.path.join(place, "left_behind.txt"), "w") as handle:
                handle.write("trace")
        except OSError:
            pass
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            # Nothing the task wrote into this process's memory may reach the next task either.
            while True:
                time.sleep(1)
        os._exit(0)
    return {"token": sbx_test_entry.TOKEN}, {}
