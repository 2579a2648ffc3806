"""The fault suite: `pytest -m faults` (issue 7). See tests/faults/harness.py."""
