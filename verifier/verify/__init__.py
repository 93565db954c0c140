"""Deciding VNN-LIB properties: attack (``attack``), sound exclusion by bounds (``bounding``), checked
counterexamples (``onnx_check``), one instance end to end (``instance``), batch runs and their summary
(``batch``, ``report``), result files (``result_file``) and the VNN-LIB 2.0 command line (``standard``).

Entry point for library use: ``verifier.verify.instance.verify_instance(onnx, vnnlib, VerifyConfig())``.
"""
