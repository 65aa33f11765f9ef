"""The engine: workers, the job runner, the scheduler, services and dependency resolution.

Private: users reach it through :class:`afterwork.Afterwork`. The engine sees the small
:class:`~afterwork._engine.host.Host` interface, never the facade; ``tests/unit/
test_public_api.py`` checks that no module here imports ``afterwork.app``.
"""
