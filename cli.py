"""Run the CLI from a checkout without installing: ``python cli.py --help``."""
from karst_deploy.cli import main

main()
