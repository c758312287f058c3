"""``python -m realtime``: a shim for the ``realtime`` command, which lives in the composition root
(:mod:`service.cli`). The one import from the engine up to ``service``, allowed in the layers contract."""

from service.cli import main

raise SystemExit(main())
