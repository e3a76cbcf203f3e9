from karst_deploy.cli import main

main()
