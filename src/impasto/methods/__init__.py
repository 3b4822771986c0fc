"""One module per method family; each holds a frozen ``Options`` and ``run``. Methods never import each other."""
