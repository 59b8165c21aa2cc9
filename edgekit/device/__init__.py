"""What runs on the device: stdlib + numpy + the artifact's runtime, nothing else (no torch, no pydantic, no edgekit
outside this package). The host ships this package to a target as one file (the runner archive, targets/ship.py);
bench uses the very same modules locally, so a row is timed by one protocol wherever it runs.

    contention.py   the neighbours' CPU share per timed chunk (/proc/stat)
    memory.py       current and peak RSS of this process (/proc/self/status)
    timing.py       interleaved rounds in chunks, and alternating blocks for settings that leave threads spinning
    ort.py, openvino.py, executorch.py
                    open a model file on its runtime with the settings the host decided (threads, session options)
    facts.py        what a target is: arch, CPU and its features, cores, memory, OS, Python, runtime versions,
                    thermal and frequency readings, and whether it looks emulated (`edgekit target info`)
    runner.py       a job from the host: check, open, time the rows, compute the bundle's logits (`bench --target`)

Python >= 3.9 (what a Raspberry Pi OS or Debian board has).
"""

import os as _os

# ONNX Runtime (1.32+, Linux/macOS) collects usage telemetry unless told not to before it initializes: at import it
# writes a device id and an event database under ~/.cache/Microsoft and queues events for upload. edgekit promises no
# telemetry, so the opt-out is set before anything imports onnxruntime, here and in the runner on a device (a user's
# explicit setting is kept).
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
