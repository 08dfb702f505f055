"""The equivalence rules the operator's tools may use (``canary verify``): tools reach the
rest of canary through ``serve`` only, so the audit's verdicts are passed on from here."""

from canary.safety.equivalence import Verdict, classify

__all__ = ["Verdict", "classify"]
