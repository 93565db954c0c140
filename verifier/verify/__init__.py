"""Deciding VNN-LIB properties: attack (``attack``), sound exclusion by bounds (``bounding``), checked
counterexamples (``onnx_check``), one instance end to end (``instance``), batch runs and their summary
(``batch``, ``report``), result files (``result_file``) and the VNN-LIB 2.0 command line (``standard``,
its worker side ``query``; ``single`` is the worker side of one ``verify-model`` run). Deadlines are
enforced from outside the work by a forked ``worker``; loaded models are cached on disk (``disk_cache``).

Entry point for library use: ``verifier.verify.instance.verify_instance(onnx, vnnlib, VerifyConfig())``.
"""
