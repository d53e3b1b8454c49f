from espalier.api.cli import main

main()
