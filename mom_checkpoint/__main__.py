from mom_checkpoint.cli.checkpoint import main

raise SystemExit(main())
