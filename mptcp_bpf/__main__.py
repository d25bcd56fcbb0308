from mptcp_bpf.cli.main import main

raise SystemExit(main())
