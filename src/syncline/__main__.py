from syncline.cli import main

main()
