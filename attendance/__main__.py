from attendance.cli import main

main()
