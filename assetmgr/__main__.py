from assetmgr.cli import main

main()
