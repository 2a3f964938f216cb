"""Loaded by scripts/schemathesis (SCHEMATHESIS_HOOKS): works around a CPython 3.11 bug.

Hypothesis names a filtered strategy after the lambda it filters with, reading that lambda's
source with `ast.parse`. Deep in schemathesis's recursive schema walk, CPython 3.11.7's parser
can fail with `SystemError: AST constructor recursion depth mismatch` (CPython gh-106905),
which ends the run with a "Runtime Error" that has nothing to do with the API. The name is
only a description: when reading the source fails so, the lambda is named `<unknown>`, as
Hypothesis itself does when it cannot find the source.
"""

from hypothesis.internal import lambda_sources

_describe = lambda_sources._lambda_description


def _lambda_description(f, *args, **kwargs):
    try:
        return _describe(f, *args, **kwargs)
    except SystemError:
        return "lambda: <unknown>"


lambda_sources._lambda_description = _lambda_description
