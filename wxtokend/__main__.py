"""``python -m wxtokend`` runs the same CLI as the ``wxtokend`` script."""

from wxtokend.cli import main

raise SystemExit(main())
