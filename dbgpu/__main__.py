from dbgpu.cli import main

raise SystemExit(main())
