from tf_migrate.cli import main

main()
