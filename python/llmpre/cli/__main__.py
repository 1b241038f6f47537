from llmpre.cli import main

main()
