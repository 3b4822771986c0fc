"""One module per method family; each holds a frozen ``Options`` and ``run``. Methods do not import each other,
except where one method is another with something added (exemplars, and AdaIN's and WCT's ``refine``, use the
optimisation method); tests/test_layering.py lists those exceptions."""
