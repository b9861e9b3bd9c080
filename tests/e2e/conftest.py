"""The slow end-to-end tests (the real engine, real subprocesses, signals): `pytest -m slow` or this folder; their
fixtures and helpers are shared with the fast suites (tests/conftest.py puts the helper folders on sys.path)."""
