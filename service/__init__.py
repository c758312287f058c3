"""The composition root: the app factory (:mod:`service.app`), the runner (:mod:`service.runner`),
the ``realtime`` command line (:mod:`service.cli`), and what only start-up configures: logging
(:mod:`service.logs`) and Sentry (:mod:`service.sentry`).

It sits on top of the layers (``make lint`` checks them, see ``[tool.importlinter]`` in
pyproject.toml): ``service`` imports ``http_api``, ``db``, ``realtime``, ``keys`` and ``topics``;
nothing imports ``service`` except the ``python -m realtime`` shim (``realtime/__main__.py``).
"""
