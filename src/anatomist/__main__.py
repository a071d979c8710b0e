from anatomist.cli import main

main()
