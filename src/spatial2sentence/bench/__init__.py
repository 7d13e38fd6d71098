"""The accuracy benchmark (``s2s benchmark``) and the semi-synthetic image simulator (``s2s simulate``).

Kept apart from the core library so that what a user imports to read images and predict cells stays
small; nothing in the core imports this package. Import the module you need (this file imports nothing,
so importing one module never loads the others):

* :mod:`.simulate`: semi-synthetic IMC images rendered from real tissue layouts (``s2s simulate``);
* :mod:`.baselines`: the classical baselines (logistic regression, gradient boosting on neighbourhoods);
"""
