from clotclf_core.cli.main import main

main()
