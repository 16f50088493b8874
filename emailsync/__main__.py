from emailsync.console import main

main()
