from latentgen.cli import main

main()
