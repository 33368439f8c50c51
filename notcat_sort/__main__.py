from notcat_sort.cli import main

main()
