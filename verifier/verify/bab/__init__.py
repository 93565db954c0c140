"""Branch and bound for ``verify-model``: open sub-domains in a ``DomainQueue`` (``queue``), the generic
loop and the ``Brancher`` interface (``driver``), and the input-splitting brancher (``input_split``)."""
