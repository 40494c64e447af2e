"""Plain helpers shared by the tests (builders of on-disk datasets and model sets, task dicts).

Fixtures that hold state across tests live in ``tests/conftest.py``; these are the functions
they and the tests call. Imported as ``tests.helpers.<module>`` (pyproject's pytest
``pythonpath`` puts the repository root on ``sys.path``)."""
