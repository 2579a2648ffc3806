"""Loaded by every Python process started with this folder on PYTHONPATH (see bench/lock_tally.py)."""

import os

if os.environ.get("TEXTBACK_LOCK_TALLY"):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench import lock_tally

    lock_tally.install(os.environ["TEXTBACK_LOCK_TALLY"])
