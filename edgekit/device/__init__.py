"""What runs on the device: the standard library (and numpy and the artifact's runtime where a model runs), nothing
else: no torch, no pydantic, no edgekit module outside this package. The host sends these files to a target as they
are, so they must run on the oldest Python a board is likely to have.

    facts.py    what a target is: arch, CPU and its features, cores, memory, OS, Python, runtime versions,
                thermal and frequency readings, and whether it looks emulated (read by `edgekit target info`)

Python >= 3.9 (what a Raspberry Pi OS or Debian board has).
"""
