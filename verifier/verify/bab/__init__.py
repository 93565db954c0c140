"""Branch and bound for ``verify-model``: open sub-domains in a ``DomainQueue`` (``queue``), the generic
loop and the ``Brancher`` interface (``driver``), the input- and ReLU-splitting branchers (``input_split``,
``relu_split``), and the loop over several workers (``shards``)."""
