"""What runs on the device: stdlib + numpy + the artifact's runtime, nothing else (no torch, no edgekit outside this
package). The host ships this package to a target as one file; bench uses the very same modules locally, so a row
is timed by one protocol wherever it runs.

    contention.py   the neighbours' CPU share per timed chunk (/proc/stat)
    memory.py       current and peak RSS of this process (/proc/self/status)
    timing.py       interleaved rounds in chunks, and alternating blocks for settings that leave threads spinning
    ort.py, openvino.py, executorch.py
                    open a model file on its runtime with the settings the host decided (threads, session options)

Python >= 3.9 (what a Raspberry Pi OS or Debian board has).
"""
