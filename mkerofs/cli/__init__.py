"""The command-line front ends: `mkerofs` (mkfs.py) and `mkerofs-read` (read.py)."""
