from eko_rtp.cli.main import main

raise SystemExit(main())
