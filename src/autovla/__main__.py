from autovla.cli import main

main()
