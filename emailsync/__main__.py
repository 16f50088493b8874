from emailsync.cli import main

main()
