from newsmon.app.cli import main

main()
