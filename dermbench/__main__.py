from dermbench.cli import main

main()
