"""``python -m eko_bench``: the benchmark's command line (see eko_bench.cli)."""

from eko_bench.cli import main

raise SystemExit(main())
