"""The accuracy benchmark (``s2s benchmark``) and the semi-synthetic image simulator (``s2s simulate``).

Kept apart from the core library so that what a user imports to read images and predict cells stays
small: nothing in the core imports this package (only the ``s2s benchmark`` / ``s2s simulate`` commands
and the training recipes that simulate their data do, when they run). Import the module you need; this
file imports nothing, so importing one module never loads the others.

* :mod:`.runner`: the benchmark's run: splits and folds, training and predicting each method per fold,
  the process pool (:func:`~.runner.run_benchmark`, :func:`~.runner.run_dataset`);
* :mod:`.methods`: the methods and their shared training budget (:class:`~.methods.Budget`);
* :mod:`.datasets`: any cells table as a benchmark dataset, and the built-in datasets' loaders;
* :mod:`.report`: ``accuracy.json``, ``accuracy.md`` and the confusion figures;
* :mod:`.baselines`: the classical baselines (logistic regression, gradient boosting on neighbourhoods);
* :mod:`.simulate`: semi-synthetic IMC images rendered from real tissue layouts.
"""
